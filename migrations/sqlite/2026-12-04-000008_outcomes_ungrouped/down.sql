CREATE TABLE outcomes_grouped (
    process_id BIGINT NOT NULL,
    step_number INTEGER NOT NULL,
    item_index BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    failure_group BIGINT REFERENCES failure_groups (id) ON DELETE CASCADE,
    PRIMARY KEY (process_id, step_number, item_index)
) WITHOUT ROWID;
INSERT INTO outcomes_grouped (process_id, step_number, item_index, seq, failure_group)
    SELECT o.process_id, o.step_number, o.item_index, o.seq, o.failure_group FROM outcomes o
    WHERE o.failure_group IS NULL OR EXISTS (SELECT 1 FROM failure_groups g WHERE g.id = o.failure_group);
DROP TABLE outcomes;
ALTER TABLE outcomes_grouped RENAME TO outcomes;
CREATE UNIQUE INDEX outcomes_in_order ON outcomes (process_id, step_number, seq);
CREATE INDEX outcomes_by_group ON outcomes (failure_group) WHERE failure_group IS NOT NULL;
