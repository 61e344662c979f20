-- The table a setting names: schema-qualified, or the first visible on the search_path.
-- Tables, partitioned tables, views, materialized views and foreign tables qualify.
SELECT c.oid FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (n.nspname = %(schema)s OR (%(schema)s IS NULL AND pg_catalog.pg_table_is_visible(c.oid)))
