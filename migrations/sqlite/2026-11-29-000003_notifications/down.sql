DROP TABLE deliveries;
ALTER TABLE processes DROP COLUMN callback_url;
ALTER TABLE processes DROP COLUMN version;
