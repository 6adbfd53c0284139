-- When a task's lease holder last claimed or heartbeated it, for the dashboard's workers.
ALTER TABLE tasks ADD COLUMN heartbeat_at BIGINT;
