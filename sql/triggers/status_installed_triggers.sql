-- What `propagator triggers status` reads back: the triggers on one table (by oid,
-- the first parameter) whose function carries the propagator description (its
-- comment starts with the marker, the second parameter), with the function's
-- signature, source and description, and whether the trigger names a column list
-- (UPDATE OF).
SELECT t.tgname, t.tgenabled, p.oid::regprocedure::text, p.prosrc,
       obj_description(p.oid, 'pg_proc'), cardinality(t.tgattr::int2[]) > 0
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_proc AS p ON p.oid = t.tgfoid
WHERE t.tgrelid = %s AND NOT t.tgisinternal
  AND starts_with(coalesce(obj_description(p.oid, 'pg_proc'), ''), %s)
ORDER BY t.tgname
