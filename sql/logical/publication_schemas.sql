-- The schemas the publication %(publication)s publishes whole (FOR TABLES IN SCHEMA,
-- PostgreSQL 15 and later).
SELECT n.nspname::text
FROM pg_catalog.pg_publication AS p
JOIN pg_catalog.pg_publication_namespace AS pn ON pn.pnpubid = p.oid
JOIN pg_catalog.pg_namespace AS n ON n.oid = pn.pnnspid
WHERE p.pubname = %(publication)s
ORDER BY n.nspname
