-- Priorities (issue 18): a process's `priority` (higher first), copied onto each of its tasks
-- with an `ordinal` that makes claims fair within a priority: a step's tasks are numbered on
-- from the lowest ordinal still due in their queue at their priority (or, in a queue with
-- none, in any queue), so a process that arrives behind a long one takes turns with it
-- instead of waiting for its end. Claims read queued tasks in (priority DESC, ordinal, id)
-- order, which the new due index serves; `tasks_clock` finds the lowest due ordinal of all.
ALTER TABLE processes ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN ordinal BIGINT NOT NULL DEFAULT 0;
-- Tasks already waiting are numbered within their step, as new ones are.
UPDATE tasks SET ordinal = numbered.n
    FROM (SELECT id, row_number() OVER (PARTITION BY process_id, step_number ORDER BY id) - 1 AS n
          FROM tasks WHERE state IN ('queued', 'leased')) AS numbered
    WHERE tasks.id = numbered.id;
DROP INDEX tasks_due;
CREATE INDEX tasks_due ON tasks (queue, state, priority DESC, ordinal, id);
CREATE INDEX tasks_clock ON tasks (state, priority, ordinal);
