-- A delayed start (issue 18, `startAt`): step 0's tasks are queued with this as their
-- available_at, and the process's message names it until then. NULL: started at once.
ALTER TABLE processes ADD COLUMN start_at BIGINT;
