-- Run inside every write transaction: is the leader's advisory lock still held by the
-- session (pid) that took it? A session advisory lock on one bigint key is stored as
-- classid (high 32 bits) and objid (low 32 bits) with objsubid 1.
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = %(pid)s
      AND database = (SELECT oid FROM pg_catalog.pg_database
                      WHERE datname = pg_catalog.current_database())
      AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %(lock)s
)
