-- Retention: delete at most %(batch_rows)s rows older than %(cutoff)s, whatever
-- their mapping (retention is one setting; a removed or renamed mapping's rows age
-- out too). Run repeatedly, each in its own short transaction, so pruning never
-- holds locks long or bloats one huge delete.
DELETE FROM {schema}.sync_history
WHERE id IN (
    SELECT id FROM {schema}.sync_history
    WHERE applied_at < %(cutoff)s
    ORDER BY id  -- ids grow with applied_at: the oldest rows come first
    LIMIT %(batch_rows)s
)
