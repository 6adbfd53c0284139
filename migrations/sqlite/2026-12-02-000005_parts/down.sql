DROP INDEX processes_open;
DROP TABLE part_items;
DROP TABLE parts;
ALTER TABLE processes DROP COLUMN open_for_parts;
