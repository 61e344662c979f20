-- The tables of the publication %(publication)s before PostgreSQL 15, which has no
-- column lists: every table publishes whole rows.
SELECT
    c.oid::bigint AS oid,
    n.nspname::text AS schema,
    c.relname::text AS name,
    NULL::text[] AS columns
FROM pg_catalog.pg_publication AS p
JOIN pg_catalog.pg_publication_rel AS r ON r.prpubid = p.oid
JOIN pg_catalog.pg_class AS c ON c.oid = r.prrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE p.pubname = %(publication)s
ORDER BY n.nspname, c.relname
