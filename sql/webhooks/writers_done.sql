-- Have all of these history writers ended? (virtual ids from writers.sql)
SELECT NOT EXISTS (
    SELECT FROM pg_catalog.pg_locks
    WHERE locktype = 'relation'
      AND relation = to_regclass(format('%%I.sync_history', %(schema)s::text))
      AND virtualtransaction = ANY(%(writers)s::text[])
)
