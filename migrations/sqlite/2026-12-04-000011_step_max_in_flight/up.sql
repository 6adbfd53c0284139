-- The most tasks of the step's queue leased at once across every node and worker (issue 18),
-- copied from its definition at the start; a claim counts the queue's live leases against
-- it, under a lock on the queue. NULL: no limit.
ALTER TABLE steps ADD COLUMN max_in_flight INTEGER CHECK (max_in_flight > 0);
