-- PostgreSQL twin of migrations/sqlite/2026-11-29-000004_outcome_groups; keep the two in step.
-- Deleting a process (retention) deletes its failure groups, whose outcomes cascade: without
-- this index every group deleted would scan all of outcomes.
CREATE INDEX outcomes_by_group ON outcomes (failure_group);
