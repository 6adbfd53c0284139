-- PostgreSQL twin of migrations/sqlite/2026-12-04-000012_priorities; keep the two in step.
-- Priorities (issue 18): a process's `priority` (higher first), copied onto each of its tasks
-- with an `ordinal` that makes claims fair within a priority: a step's tasks are numbered on
-- from the lowest ordinal still queued in their queue at their priority, so a process that
-- arrives behind a long one takes turns with it instead of waiting for its end. Claims read
-- queued tasks in (priority DESC, ordinal, id) order, which the new due index serves.
ALTER TABLE processes ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN ordinal BIGINT NOT NULL DEFAULT 0;
DROP INDEX tasks_due;
CREATE INDEX tasks_due ON tasks (queue, state, priority DESC, ordinal, id);
