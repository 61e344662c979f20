-- propagator change notification: removal
--
-- Table: {table_label}
--
-- Drops the five triggers and their two functions, plus any trigger or function
-- an earlier version of propagator left on this table. The table and its data
-- are not touched. Safe to run when nothing is installed.

SET LOCAL lock_timeout = '5s';

DROP TRIGGER IF EXISTS {insert_trigger} ON {table};
DROP TRIGGER IF EXISTS {update_trigger} ON {table};
DROP TRIGGER IF EXISTS {delete_trigger} ON {table};
DROP TRIGGER IF EXISTS {send_trigger} ON {table};
DROP TRIGGER IF EXISTS {send_update_trigger} ON {table};

SELECT set_config('propagator.trigger_table', {table_text}, true),
       set_config('propagator.keep_collect', '', true),
       set_config('propagator.keep_send', '', true);
{cleanup}

DROP FUNCTION IF EXISTS {collect}();
DROP FUNCTION IF EXISTS {send}();
