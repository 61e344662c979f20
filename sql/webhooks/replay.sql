-- Move an endpoint's cursor back to just before the first row applied at or after
-- %(since)s: those rows are sent again. Only ever back: a time after the cursor
-- leaves it where it is (nothing pending is skipped).
UPDATE {schema}.webhook_cursors
SET delivered_id = least(delivered_id, target.id),
    pruned_through = least(pruned_through, target.id),
    updated_at = statement_timestamp()
FROM (
    SELECT coalesce(
        (SELECT min(id) - 1 FROM {schema}.sync_history WHERE applied_at >= %(since)s),
        (SELECT max(id) FROM {schema}.sync_history), 0) AS id
) AS target
WHERE endpoint = %(endpoint)s
RETURNING webhook_cursors.delivered_id,
    (SELECT min(id) FROM {schema}.sync_history) AS oldest_id,
    (SELECT min(applied_at) FROM {schema}.sync_history) AS oldest_at
