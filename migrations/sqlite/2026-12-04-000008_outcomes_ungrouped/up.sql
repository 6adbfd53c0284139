-- Outcomes without a foreign key to their failure group, nor the index that served its
-- cascade: on PostgreSQL the key's trigger ran for every inserted row, successes included,
-- and with the index cost a fifth of recording a task's outcomes. The writers give the
-- guarantee themselves: a group is made in the transaction that records its outcomes, and
-- its outcomes are deleted explicitly before it (retry) or with their process (retention).
-- SQLite cannot drop a constraint, so the table is rebuilt, rows and the order index kept.
CREATE TABLE outcomes_ungrouped (
    process_id BIGINT NOT NULL,
    step_number INTEGER NOT NULL,
    item_index BIGINT NOT NULL,
    -- Recording order within the step: 0, 1, 2, ...
    seq BIGINT NOT NULL,
    -- NULL for a success.
    failure_group BIGINT,
    PRIMARY KEY (process_id, step_number, item_index)
) WITHOUT ROWID;
INSERT INTO outcomes_ungrouped (process_id, step_number, item_index, seq, failure_group)
    SELECT process_id, step_number, item_index, seq, failure_group FROM outcomes;
DROP TABLE outcomes;
ALTER TABLE outcomes_ungrouped RENAME TO outcomes;
CREATE UNIQUE INDEX outcomes_in_order ON outcomes (process_id, step_number, seq);
