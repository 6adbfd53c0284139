DELETE FROM outcomes o
    WHERE o.failure_group IS NOT NULL AND NOT EXISTS (SELECT 1 FROM failure_groups g WHERE g.id = o.failure_group);
ALTER TABLE outcomes ADD CONSTRAINT outcomes_failure_group_fkey
    FOREIGN KEY (failure_group) REFERENCES failure_groups (id) ON DELETE CASCADE;
CREATE INDEX outcomes_by_group ON outcomes (failure_group) WHERE failure_group IS NOT NULL;
