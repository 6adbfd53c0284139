ALTER TABLE processes DROP COLUMN start_at;
