-- propagator change history, migration 3: the refresh source.
--
--   refresh     a full reconcile run because the sandbox was refreshed under the
--               daemon (table recreated, truncated or reloaded, database recreated)
--
-- Every existing row already satisfies the wider check, so it is added NOT VALID:
-- no scan of a table that may hold months of history.

ALTER TABLE {schema}.sync_history DROP CONSTRAINT sync_history_source_check;

ALTER TABLE {schema}.sync_history ADD CONSTRAINT sync_history_source_check
    CHECK (source IN ('event', 'catchup', 'reconcile', 'manual', 'refresh')) NOT VALID;
