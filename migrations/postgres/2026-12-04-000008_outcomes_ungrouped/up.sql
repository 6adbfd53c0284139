-- PostgreSQL twin of migrations/sqlite/2026-12-04-000008_outcomes_ungrouped; keep the two in step.
-- Outcomes without a foreign key to their failure group, nor the index that served its
-- cascade: the key's trigger ran for every inserted row, successes included, and with the
-- index cost a fifth of recording a task's outcomes (the inserts are most of the time a
-- completion holds its process's lock). The writers give the guarantee themselves: a group
-- is made in the transaction that records its outcomes, and its outcomes are deleted
-- explicitly before it (retry) or with their process (retention).
ALTER TABLE outcomes DROP CONSTRAINT outcomes_failure_group_fkey;
DROP INDEX outcomes_by_group;
