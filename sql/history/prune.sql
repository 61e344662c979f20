-- Retention: delete at most %(batch_rows)s history rows older than %(cutoff)s.
-- Run repeatedly, each in its own short transaction, so pruning never holds
-- locks long or bloats one huge delete.
DELETE FROM {schema}.sync_history
WHERE id IN (
    SELECT id FROM {schema}.sync_history
    WHERE applied_at < %(cutoff)s
    ORDER BY id  -- ids grow with applied_at: the oldest rows are first on the primary key
    LIMIT %(batch_rows)s
)
