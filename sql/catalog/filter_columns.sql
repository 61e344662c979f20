-- The columns of %(table)s a view reads (here: the probe view over a production
-- filter), from the dependencies of the view's rewrite rule, in table order. pg_depend
-- is readable by every role, whoever owns the table.
SELECT a.attname
FROM pg_catalog.pg_depend AS d
JOIN pg_catalog.pg_rewrite AS r ON r.oid = d.objid
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND r.ev_class = pg_catalog.to_regclass(%(view)s)
  AND d.refobjid = pg_catalog.to_regclass(%(table)s)
  AND d.refobjsubid > 0
GROUP BY a.attname, a.attnum
ORDER BY a.attnum
