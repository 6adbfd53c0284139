-- PostgreSQL twin of migrations/sqlite/2026-11-29-000001_processes; keep the two in step.
-- Processes, their steps' counters, their items and each item's outcome per step.
-- Sized for large processes: a status read without item lists touches `processes` and `steps`
-- only, whatever the number of items; items and outcomes are read only when listed.

CREATE TABLE processes (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    async_process_id TEXT NOT NULL,
    reference_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    current_step INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    item_count BIGINT NOT NULL,
    additional_data TEXT NOT NULL,
    -- Microseconds since the Unix epoch.
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant, async_process_id)
);

-- Lookup by reference ID, oldest first, within a tenant.
CREATE INDEX processes_by_reference ON processes (tenant, reference_id, created_at, async_process_id);

CREATE TABLE steps (
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    step_number INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL,
    -- Items that entered the step, and the outcomes recorded so far.
    entered BIGINT NOT NULL,
    succeeded BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    PRIMARY KEY (process_id, step_number)
);

CREATE TABLE items (
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    item_index BIGINT NOT NULL,
    -- The item's JSON text, as given.
    value TEXT NOT NULL,
    PRIMARY KEY (process_id, item_index)
);

-- One row per (step, code, message): failures with the same code and message form one group.
CREATE TABLE failure_groups (
    id BIGSERIAL PRIMARY KEY,
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    step_number INTEGER NOT NULL,
    code BIGINT NOT NULL,
    status_message TEXT NOT NULL,
    UNIQUE (process_id, step_number, code, status_message)
);

-- The primary key makes a second outcome for the same item and step impossible.
CREATE TABLE outcomes (
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    step_number INTEGER NOT NULL,
    item_index BIGINT NOT NULL,
    -- Recording order within the step: 0, 1, 2, ...
    seq BIGINT NOT NULL,
    -- NULL for a success.
    failure_group BIGINT REFERENCES failure_groups (id) ON DELETE CASCADE,
    PRIMARY KEY (process_id, step_number, item_index)
);

CREATE UNIQUE INDEX outcomes_in_order ON outcomes (process_id, step_number, seq);
