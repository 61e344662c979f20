-- Drop the replication slot %(slot)s: the server stops keeping WAL for it. Refused by
-- the server while a session reads the slot.
SELECT pg_catalog.pg_drop_replication_slot(%(slot)s)
