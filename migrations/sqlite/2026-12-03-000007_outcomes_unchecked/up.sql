-- Outcomes without a foreign key to their process: checked per inserted row, it was most of
-- the cost of recording on PostgreSQL (a trigger and a lookup of the process for each of a
-- task's 500 rows) for a guarantee the writers already give: outcomes are written only inside
-- a transaction that holds their process, and retention deletes them explicitly with it.
-- SQLite cannot drop a constraint, so the table is rebuilt, rows and indexes kept.
CREATE TABLE outcomes_unchecked (
    process_id BIGINT NOT NULL,
    step_number INTEGER NOT NULL,
    item_index BIGINT NOT NULL,
    -- Recording order within the step: 0, 1, 2, ...
    seq BIGINT NOT NULL,
    -- NULL for a success.
    failure_group BIGINT REFERENCES failure_groups (id) ON DELETE CASCADE,
    PRIMARY KEY (process_id, step_number, item_index)
) WITHOUT ROWID;
INSERT INTO outcomes_unchecked (process_id, step_number, item_index, seq, failure_group)
    SELECT process_id, step_number, item_index, seq, failure_group FROM outcomes;
DROP TABLE outcomes;
ALTER TABLE outcomes_unchecked RENAME TO outcomes;
CREATE UNIQUE INDEX outcomes_in_order ON outcomes (process_id, step_number, seq);
CREATE INDEX outcomes_by_group ON outcomes (failure_group) WHERE failure_group IS NOT NULL;
