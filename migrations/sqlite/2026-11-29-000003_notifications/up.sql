-- What waiting readers and FinishProcess notifications need (contract §5, §6).

-- Moves on every change a status reader could see: long-polls and event streams compare it
-- instead of re-reading whole answers.
ALTER TABLE processes ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- Where to POST the process's envelope when it finishes; NULL for none.
ALTER TABLE processes ADD COLUMN callback_url TEXT;

-- The outbox: one row per finish to announce, written in the transaction that finished the
-- process, so a delivery survives any crash. state: pending | delivered | failed.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY NOT NULL,
    process_id BIGINT NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    -- The X-Async-Engine-Delivery header: the same on every attempt.
    delivery_id TEXT NOT NULL,
    url TEXT NOT NULL,
    -- The status the process finished in, for operators.
    finished_status TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Microseconds since the Unix epoch. A claimed attempt moves it past its own timeout, so
    -- an attempt cut short by a crash is made again by any node.
    next_attempt_at BIGINT NOT NULL,
    -- The body, fixed by the first attempt so that every attempt sends (and signs) the same.
    body TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);

CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_of_process ON deliveries (process_id);
