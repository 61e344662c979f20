-- Whether the slot %(slot)s has ever handed a transaction to a reader. A slot nobody has
-- read yet (new, or created again by a DBA) holds nothing from before its creation: the
-- daemon catches up once with a full reconcile. No row: never read, or statistics lost
-- in a crash of the server (one needless catch-up, never a missed change).
SELECT total_txns > 0 FROM pg_catalog.pg_stat_replication_slots WHERE slot_name = %(slot)s
