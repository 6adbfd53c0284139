-- PostgreSQL twin of migrations/sqlite/2026-12-03-000007_outcomes_unchecked; keep the two in step.
-- Outcomes without a foreign key to their process: checked per inserted row (a trigger and a
-- lookup of the process for each of a task's 500 rows), it was most of the cost of recording,
-- for a guarantee the writers already give: outcomes are written only inside a transaction
-- that holds their process's lock, and retention deletes them explicitly with it.
ALTER TABLE outcomes DROP CONSTRAINT outcomes_process_id_fkey;
