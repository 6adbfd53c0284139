-- Deleting a process (retention) deletes its failure groups, whose outcomes cascade: without
-- this index every group deleted would scan all of outcomes. Partial: successes (NULL) are
-- most rows and need no entry, so recording them pays nothing for it.
CREATE INDEX outcomes_by_group ON outcomes (failure_group) WHERE failure_group IS NOT NULL;
