-- The publication %(publication)s, or no row: its owner (and whether the current role
-- acts as it), whether it is FOR ALL TABLES, the events it publishes and whether a
-- partition's changes are published as its root table's.
SELECT
    p.pubname::text AS name,
    pg_catalog.pg_get_userbyid(p.pubowner)::text AS owner,
    pg_catalog.pg_has_role(p.pubowner, 'USAGE') AS owned,
    p.puballtables,
    p.pubinsert,
    p.pubupdate,
    p.pubdelete,
    p.pubtruncate,
    p.pubviaroot
FROM pg_catalog.pg_publication AS p
WHERE p.pubname = %(publication)s
