-- PostgreSQL twin of migrations/sqlite/2026-11-29-000002_engine; keep the two in step.
-- What the engine needs to run processes: each step's definition as it was when the process
-- started, tasks with leases, idempotency keys, and how a process ended early.

-- Processes imported as history (seeding) are not runnable: the engine never resumes them.
ALTER TABLE processes ADD COLUMN runnable BOOLEAN NOT NULL DEFAULT FALSE;
-- NULL, 'cancelled' or 'aborted_by_policy'.
ALTER TABLE processes ADD COLUMN end_reason TEXT;
ALTER TABLE processes ADD COLUMN idempotency_key TEXT;
-- NULL keys are distinct, so only processes started with a key are constrained.
CREATE UNIQUE INDEX processes_idempotency ON processes (tenant, idempotency_key);
-- The process list: newest first within a tenant.
CREATE INDEX processes_newest ON processes (tenant, created_at DESC, id DESC);

ALTER TABLE steps ADD COLUMN handler TEXT NOT NULL DEFAULT '';
ALTER TABLE steps ADD COLUMN chunk_size INTEGER NOT NULL DEFAULT 100;
ALTER TABLE steps ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;
ALTER TABLE steps ADD COLUMN timeout_secs BIGINT NOT NULL DEFAULT 300;
ALTER TABLE steps ADD COLUMN on_item_failure TEXT NOT NULL DEFAULT 'skip';
-- A task of the step has been claimed (or it had nothing to run).
ALTER TABLE steps ADD COLUMN started BOOLEAN NOT NULL DEFAULT FALSE;
-- The next outcome's seq within the step; seqs are never reused, even after a retry.
ALTER TABLE steps ADD COLUMN next_seq BIGINT NOT NULL DEFAULT 0;
UPDATE steps SET next_seq = succeeded + failed, started = (status <> 'WaitingToProcess');

-- One chunk of one step's items. state: queued | leased | done | cancelled.
CREATE TABLE tasks (
    id BIGSERIAL PRIMARY KEY,
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    step_number INTEGER NOT NULL,
    queue TEXT NOT NULL,
    -- JSON array of item indices.
    item_indices TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    -- The step's timeout_secs: no lease on this task lasts longer.
    timeout_secs BIGINT NOT NULL,
    lease_token TEXT,
    lease_expires_at BIGINT,
    worker_id TEXT,
    available_at BIGINT NOT NULL,
    last_error TEXT
);

-- Due work per queue, oldest first: claims walk it in id order and stop after a few rows,
-- however many tasks are queued or done.
CREATE INDEX tasks_due ON tasks (queue, state, id);
CREATE INDEX tasks_of_process ON tasks (process_id, step_number, state);
