-- propagator change notification, trigger version {version}
--
-- Table: {table_label}
-- Channel: {channel_label}
-- Key columns: {keys_label}
-- Watched columns: {watched_label}
--
-- What it does. Keys only, never values, are sent as payload v1
--     {{"v":1,"t":<epoch seconds>,"k":[[<key part>, ...], ...]}}
-- and the daemon re-reads production for those keys.
--   * Row triggers collect keys: every INSERT (new key), every DELETE (old key)
--     and an UPDATE only when a watched column IS DISTINCT FROM its old value
--     (both the old and the new key when a key column changes).
--   * An UPDATE whose SET list names no watched column queues no trigger at all
--     (UPDATE OF <watched columns>), so it costs production nothing. Should the
--     table or one of its partitions have a BEFORE UPDATE row trigger, which could
--     change a watched column without naming it, every UPDATE is watched instead
--     and the row trigger fires only WHEN a watched column really changed; the
--     block choosing between the two forms is below.
--   * Statement triggers then send the collected keys in as few payloads as
--     fit under PostgreSQL's 8000-byte NOTIFY limit: one notification per
--     ~{key_bytes_per_payload} bytes of keys, never one per row. More than {resync_payloads} payloads' worth
--     of keys, or a key too long to fit in one payload, send one
--     {{"v":1,"t":...,"resync":true}} instead and the daemon runs a full reconcile.
--   * Keys wait for the end of the statement in two transaction-local
--     settings, never in a table:
--         {buffer_label}
--         {chunks_label}
--     A rolled-back statement or transaction sends nothing.
--   * Partitioned tables: statements on the partitioned table are announced;
--     a statement addressing one partition directly is not (statement triggers
--     fire on the table a statement names) and waits for the next reconcile.
--   * DELETE policy: the daemon re-reads production, finds no row and leaves
--     the sandbox row as it is; propagator never deletes sandbox rows.
--     TRUNCATE is not watched, for the same reason.
--   * A key with a NULL part cannot be matched in the sandbox and is not sent.
--   * It never fails the user's statement: any error is reported as a WARNING
--     and turned into a resync request.
--
-- Safe to run again: it replaces the functions in place and recreates the
-- triggers, dropping any trigger or function an earlier version left behind,
-- all in one transaction. Undo with `propagator triggers sql --uninstall`.

-- Wait at most this long for the table lock rather than queue behind a long transaction.
SET LOCAL lock_timeout = '5s';

{comparable_check}

{collect_function}

{send_function}

-- Drop the triggers (and functions no longer used) of any earlier version.
SELECT set_config('propagator.trigger_table', {table_text}, true),
       set_config('propagator.keep_collect', {collect_text}, true),
       set_config('propagator.keep_send', {send_text}, true);
{cleanup}

CREATE TRIGGER {insert_trigger}
    AFTER INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {collect}();

CREATE TRIGGER {delete_trigger}
    AFTER DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {collect}();

CREATE TRIGGER {send_trigger}
    AFTER INSERT OR DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {send}();

{update_triggers}

-- What `propagator triggers status` reads back: version, channel and columns.
COMMENT ON FUNCTION {collect}() IS {description};
COMMENT ON FUNCTION {send}() IS {description};
