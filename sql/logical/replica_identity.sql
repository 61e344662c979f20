-- The replica identity of the table %(table)s (a quoted name) and of each partition
-- below it, the table first. Once a table is in a publication that publishes UPDATE
-- and DELETE, PostgreSQL refuses those statements on it unless its identity is usable:
-- DEFAULT with a primary key, USING INDEX with that index still present, or FULL.
-- Each row: schema, name, relkind, relreplident (d, n, f, i), the identity's columns
-- (the primary key's for d, the identity index's for i, none otherwise) and whether
-- the current role acts as the table's owner (adding a table to a publication needs it).
WITH root AS (
    SELECT pg_catalog.to_regclass(%(table)s) AS relid
), tree AS (
    SELECT relid, 0 AS level FROM root WHERE relid IS NOT NULL
    UNION
    SELECT t.relid, t.level
    FROM root, pg_catalog.pg_partition_tree(root.relid) AS t
    WHERE root.relid IS NOT NULL
)
SELECT
    n.nspname::text AS schema,
    c.relname::text AS name,
    c.relkind::text AS kind,
    c.relreplident::text AS identity,
    ARRAY(
        SELECT a.attname
        FROM pg_catalog.pg_index AS i
        CROSS JOIN unnest(i.indkey::smallint[]) WITH ORDINALITY AS k (attnum, position)
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = c.oid
          AND k.position <= i.indnkeyatts
          AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                  WHEN 'i' THEN i.indisreplident
                                  ELSE false END
        ORDER BY k.position
    )::text[] AS columns,
    pg_catalog.pg_has_role(c.relowner, 'USAGE') AS owned
FROM tree
JOIN pg_catalog.pg_class AS c ON c.oid = tree.relid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
ORDER BY tree.level, n.nspname, c.relname
