-- The transactions writing into the history right now, as their virtual ids. An
-- INSERT takes this lock before it draws an id and keeps it to its end, so once
-- all of them have ended, every id drawn before this moment is committed or gone.
SELECT coalesce(array_agg(virtualtransaction::text), ARRAY[]::text[])
FROM pg_catalog.pg_locks
WHERE locktype = 'relation'
  AND mode = 'RowExclusiveLock'
  AND relation = to_regclass(format('%%I.sync_history', %(schema)s::text))
  AND pid IS DISTINCT FROM pg_backend_pid()
