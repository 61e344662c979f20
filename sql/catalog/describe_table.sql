-- The live columns of one table, in order: name, declared type, type category.
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
