DELETE FROM outcomes o WHERE NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = o.process_id);
ALTER TABLE outcomes ADD CONSTRAINT outcomes_process_id_fkey
    FOREIGN KEY (process_id) REFERENCES processes (id) ON DELETE CASCADE;
