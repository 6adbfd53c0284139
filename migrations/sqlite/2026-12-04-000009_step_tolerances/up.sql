-- How many failed items a step bears before it fails its process (issue 18), copied from its
-- definition when the process starts like the step's other policies; NULL: no limit.
-- The percentage is kept in hundredths of a percent, so that the check is integer arithmetic.
ALTER TABLE steps ADD COLUMN tolerated_failure_count BIGINT
    CHECK (tolerated_failure_count >= 0);
ALTER TABLE steps ADD COLUMN tolerated_failure_hundredths INTEGER
    CHECK (tolerated_failure_hundredths BETWEEN 0 AND 10000);
