-- propagator change notification, trigger version {version}
--
-- Table: {table_label}
-- Channel: {channel_label}
-- Key columns: {keys_label}
-- Watched columns: {watched_label}
--
-- What it does. After each INSERT, UPDATE or DELETE statement on the table, one
-- statement-level trigger (transition tables, so never one call per row) sends
-- the keys of the rows whose watched columns really changed, as payload v1:
--     {{"v":1,"t":<epoch seconds>,"k":[[<key part>, ...], ...]}}
-- Keys only, never values: the daemon re-reads production for those keys.
--   * INSERT sends the new keys; UPDATE sends a key only when a watched column
--     IS DISTINCT FROM its old value, and both the old and the new key when a
--     key column changes.
--   * DELETE sends the old keys. Policy: the daemon re-reads production, finds
--     no row and leaves the sandbox row as it is (the sandbox keeps rows that
--     production deleted; nothing in the sandbox is ever deleted).
--   * TRUNCATE is not watched, for the same reason.
--   * Keys are sent in chunks, each payload under PostgreSQL's 8000-byte NOTIFY
--     limit; more than {resync_key_count} changed keys in one statement, or a
--     key longer than {max_key_bytes} bytes, send one {{"v":1,"t":...,"resync":true}}
--     instead and the daemon runs a full reconcile.
--   * It never fails the user's statement: any error is reported as a WARNING
--     and turned into a resync request.
--
-- Safe to run again: it replaces the function in place and recreates the
-- triggers, dropping any trigger or function an earlier version left behind,
-- all in one transaction. Undo with `propagator triggers sql --uninstall`.

-- Wait at most this long for the table lock rather than queue behind a long transaction.
SET LOCAL lock_timeout = '5s';

{function_definition}

-- Drop the triggers (and functions no longer used) of any earlier version.
SELECT set_config('propagator.trigger_table', {table_text}, true),
       set_config('propagator.trigger_function', {function_text}, true);
{cleanup}

CREATE TRIGGER {insert_trigger}
    AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS propagator_new
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

CREATE TRIGGER {update_trigger}
    AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS propagator_old NEW TABLE AS propagator_new
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

CREATE TRIGGER {delete_trigger}
    AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS propagator_old
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- What `propagator triggers status` reads back: version, channel and columns.
COMMENT ON FUNCTION {function}() IS {description};
