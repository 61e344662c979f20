-- The unique indexes of one table that can prove key columns unique: valid, not
-- partial, on plain columns only (no expression). Each row: the index name, the
-- kind of constraint behind it ('p' primary key, 'u' unique, NULL for a plain
-- unique index) and its key columns in order (INCLUDE columns left out).
SELECT
    ic.relname,
    con.contype,
    ARRAY(
        SELECT a.attname
        FROM unnest(i.indkey::smallint[]) WITH ORDINALITY AS k (attnum, position)
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE k.position <= i.indnkeyatts
        ORDER BY k.position
    )::text[] AS columns
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
LEFT JOIN pg_catalog.pg_constraint AS con
    ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u')
WHERE i.indrelid = %(table)s
  AND i.indisunique
  AND i.indisvalid
  AND i.indpred IS NULL
  AND i.indexprs IS NULL
ORDER BY ic.relname
