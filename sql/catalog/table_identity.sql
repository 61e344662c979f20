-- The sandbox table's identity and row churn, read every heartbeat to notice a refresh.
-- A recreated database has a new oid, a recreated table a new oid, a TRUNCATE or a
-- rewrite a new filenode; a reload by DELETE + COPY keeps all three and shows up
-- only in the row counters. Updates (all propagator ever does) change none of these.
SELECT d.oid::bigint, c.oid::bigint, pg_catalog.pg_relation_filenode(c.oid)::bigint,
       coalesce(s.n_live_tup, 0), coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_del, 0)
FROM pg_catalog.pg_database d
CROSS JOIN pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
WHERE d.datname = pg_catalog.current_database()
  AND c.relname = %(name)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (n.nspname = %(schema)s OR (%(schema)s IS NULL AND pg_catalog.pg_table_is_visible(c.oid)))
