-- What the checksum reconcile needs to know about one side before trusting it:
-- the server version (hash and numeric functions), the encoding, the planner's
-- row estimate (to size the segments) and whether a unique, non-partial index
-- covers the key columns (otherwise duplicate keys could hide in a digest), and
-- whether a row can be fetched again by its ctid (a plain table or materialized view:
-- a partitioned table's ctids repeat from one partition to the next).
-- %(table)s is the quoted table name; %(keys)s the key column names.
SELECT
    current_setting('server_version_num')::integer AS server_version_num,
    current_setting('server_encoding') AS server_encoding,
    coalesce(c.reltuples, -1)::float8 AS estimated_rows,
    EXISTS (
        SELECT 1
        FROM pg_catalog.pg_index AS i
        WHERE i.indrelid = c.oid
          AND i.indisunique
          AND i.indisvalid
          AND i.indpred IS NULL
          AND i.indexprs IS NULL
          AND NOT EXISTS (
              SELECT 1
              FROM unnest(i.indkey::smallint[]) WITH ORDINALITY AS k (attnum, position)
              WHERE k.position <= i.indnkeyatts
                AND k.attnum NOT IN (
                    SELECT a.attnum
                    FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = c.oid AND a.attname = ANY (%(keys)s::text[])
                )
          )
    ) AS keys_unique,
    c.relkind IN ('r', 'm') AS addressable
FROM pg_catalog.pg_class AS c
WHERE c.oid = %(table)s::regclass
