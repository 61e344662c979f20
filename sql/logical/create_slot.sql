-- Create the logical replication slot %(slot)s with the pgoutput plugin. Run it outside
-- a transaction block: it waits for the transactions running now to end, then returns
-- the LSN from which the slot keeps every change.
SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot(%(slot)s, 'pgoutput')
