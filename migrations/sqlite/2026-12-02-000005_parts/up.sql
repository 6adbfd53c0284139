-- Uploads in parts (issue 15): a process started open takes its items in numbered parts, each
-- stored on its own until the close, which numbers them (parts in number order) into `items`.

-- TRUE from an open start until its close (or its cancel, or its expiry).
ALTER TABLE processes ADD COLUMN open_for_parts BOOLEAN NOT NULL DEFAULT FALSE;

-- One row per part received; putting a part again replaces its row and its items.
CREATE TABLE parts (
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    part_number INTEGER NOT NULL,
    item_count BIGINT NOT NULL,
    byte_count BIGINT NOT NULL,
    -- Microseconds since the Unix epoch.
    received_at BIGINT NOT NULL,
    PRIMARY KEY (process_id, part_number)
) WITHOUT ROWID;

CREATE TABLE part_items (
    process_id BIGINT NOT NULL,
    part_number INTEGER NOT NULL,
    -- 0, 1, 2, ... within the part.
    position BIGINT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (process_id, part_number, position),
    FOREIGN KEY (process_id, part_number) REFERENCES parts (process_id, part_number) ON DELETE CASCADE
) WITHOUT ROWID;

-- Retention finds the open processes left past limits.open_process_hours without a scan.
CREATE INDEX processes_open ON processes (created_at) WHERE open_for_parts;
