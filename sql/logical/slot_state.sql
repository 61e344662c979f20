-- One replication slot as capture sees it (%(slot)s: its name), or no row when it does
-- not exist. The daemon reads these columns by position, in this order. wal_status is
-- reserved or extended (healthy), unreserved (past max_slot_wal_keep_size: lost at the
-- next checkpoint unless read) or lost (the WAL it needed is gone). retained_bytes is
-- how much WAL the slot holds back on the server's disk.
SELECT
    slot_name::text AS slot_name,
    plugin::text AS plugin,
    slot_type,
    database::text AS database,
    active,
    active_pid,
    wal_status,
    restart_lsn::text AS restart_lsn,
    confirmed_flush_lsn::text AS confirmed_flush_lsn,
    pg_catalog.pg_wal_lsn_diff(
        CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
             ELSE pg_catalog.pg_current_wal_lsn() END,
        restart_lsn
    )::bigint AS retained_bytes
FROM pg_catalog.pg_replication_slots
WHERE slot_name = %(slot)s
