-- End a session this process abandoned as half-open, matched by pid and start time so
-- that a pid reused by another session is never touched.
SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
WHERE pid = %s AND backend_start = %s
