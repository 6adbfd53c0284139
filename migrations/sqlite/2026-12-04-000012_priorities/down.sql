DROP INDEX tasks_clock;
DROP INDEX tasks_due;
CREATE INDEX tasks_due ON tasks (queue, state, id);
ALTER TABLE tasks DROP COLUMN ordinal;
ALTER TABLE tasks DROP COLUMN priority;
ALTER TABLE processes DROP COLUMN priority;
