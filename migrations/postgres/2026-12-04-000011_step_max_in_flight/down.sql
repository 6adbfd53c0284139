ALTER TABLE steps DROP COLUMN max_in_flight;
