-- The tables of the publication %(publication)s (PostgreSQL 15 and later): the table's
-- oid, schema and name, and its column list in table order (NULL: no list, whole rows).
SELECT
    c.oid::bigint AS oid,
    n.nspname::text AS schema,
    c.relname::text AS name,
    CASE WHEN r.prattrs IS NULL THEN NULL ELSE ARRAY(
        SELECT a.attname
        FROM unnest(r.prattrs::smallint[]) AS k (attnum)
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = r.prrelid AND a.attnum = k.attnum
        ORDER BY a.attnum
    )::text[] END AS columns
FROM pg_catalog.pg_publication AS p
JOIN pg_catalog.pg_publication_rel AS r ON r.prpubid = p.oid
JOIN pg_catalog.pg_class AS c ON c.oid = r.prrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE p.pubname = %(publication)s
ORDER BY n.nspname, c.relname
