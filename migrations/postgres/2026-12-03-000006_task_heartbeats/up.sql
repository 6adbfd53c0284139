-- PostgreSQL twin of migrations/sqlite/2026-12-03-000006_task_heartbeats; keep the two in step.
-- When a task's lease holder last claimed or heartbeated it, for the dashboard's workers.
ALTER TABLE tasks ADD COLUMN heartbeat_at BIGINT;
