-- The tables a publication publishes (no row: the publication is missing).
SELECT p.pubname, t.schemaname, t.tablename
  FROM pg_catalog.pg_publication AS p
  LEFT JOIN pg_catalog.pg_publication_tables AS t ON t.pubname = p.pubname
 WHERE p.pubname = %(publication)s
