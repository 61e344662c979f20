-- One installed trigger function, by its signature (the parameter, for example
-- "public"."propagator_collect_jobs"()): signature, source and description; no row
-- when it does not exist.
SELECT p.oid::regprocedure::text, p.prosrc, obj_description(p.oid, 'pg_proc')
FROM pg_catalog.pg_proc AS p
WHERE p.oid = to_regprocedure(%s)
