-- Which of the given columns of one table may hold NULL (no NOT NULL constraint).
SELECT a.attname
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = %(table)s
  AND a.attname = ANY (%(columns)s::text[])
  AND a.attnum > 0
  AND NOT a.attisdropped
  AND NOT a.attnotnull
ORDER BY a.attnum
