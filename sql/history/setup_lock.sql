-- Serializes history setup: two daemons starting at once wait for each other
-- here instead of applying the same migration twice. The lock is keyed by the
-- text 'propagator.history.' followed by the schema name and released when the
-- setup transaction ends.
SELECT pg_advisory_xact_lock(hashtext(%(lock_name)s))
