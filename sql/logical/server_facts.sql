-- What logical capture needs of the production server and of the role it connects as.
-- max_slot_wal_keep_size is read twice: as shown (1GB) and in MB (-1: unbounded); both
-- are NULL before PostgreSQL 13. used_slots counts every slot, physical ones included,
-- against max_replication_slots.
SELECT
    current_setting('server_version_num')::integer AS server_version_num,
    current_setting('wal_level') AS wal_level,
    current_setting('max_slot_wal_keep_size', true) AS max_slot_wal_keep_size,
    (SELECT s.setting::bigint FROM pg_catalog.pg_settings AS s
     WHERE s.name = 'max_slot_wal_keep_size') AS max_slot_wal_keep_size_mb,
    current_setting('max_replication_slots')::integer AS max_replication_slots,
    (SELECT count(*) FROM pg_catalog.pg_replication_slots)::integer AS used_slots,
    current_user::text AS role,
    r.rolsuper AS superuser,
    r.rolreplication AS replication,
    pg_catalog.current_database()::text AS database,
    pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') AS can_create
FROM pg_catalog.pg_roles AS r
WHERE r.rolname = current_user
