-- propagator change history, migration 1: the sync_history table.
--
-- One row per sandbox field the daemon or a reconcile really changed, written in
-- the same transaction as the change itself, so the history holds exactly what
-- was committed: a batch that rolls back leaves no trace here.
--
--   batch_id    one id per sandbox transaction (rows written together share it)
--   source      event (a notification), catchup (after a (re)connect), reconcile
--               (periodic or `propagator reconcile --apply`), manual (asked for over HTTP)
--   changed_at  when production changed, from the notification; NULL when unknown
--   applied_at  when the sandbox was written
--   key         the row's key as a JSON array, in key-column order
--   key_label   the same key as people type it (10001-A), for lookups
--   field       the sandbox column; old_value / new_value are its values as JSON
--
-- Applied by `propagator setup` (and by the daemon at start), inside one
-- transaction together with its row in schema_version.

CREATE TABLE {schema}.sync_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id    uuid        NOT NULL,
    source      text        NOT NULL
                CHECK (source IN ('event', 'catchup', 'reconcile', 'manual')),
    changed_at  timestamptz,
    applied_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    key         jsonb       NOT NULL CHECK (jsonb_typeof(key) = 'array'),
    key_label   text COLLATE "C" NOT NULL,  -- byte order: cheap to index, exact equality
    field       text        NOT NULL,
    old_value   jsonb,
    new_value   jsonb
);

COMMENT ON TABLE {schema}.sync_history IS
    'propagator: every sandbox field change, recorded in the transaction that made it';

-- --since/--until go by applied_at, which grows with id: a BRIN index answers
-- time ranges and costs the insert almost nothing (retention walks the primary key).
CREATE INDEX sync_history_applied_at ON {schema}.sync_history USING brin (applied_at);

-- "What happened to this row", newest first.
CREATE INDEX sync_history_key_label ON {schema}.sync_history (key_label, id);
