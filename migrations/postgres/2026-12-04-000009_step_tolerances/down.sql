ALTER TABLE steps DROP COLUMN tolerated_failure_hundredths;
ALTER TABLE steps DROP COLUMN tolerated_failure_count;
