-- Every endpoint's cursor with what is still to send: rows after the cursor
-- (before filters), and how long the oldest of them has waited.
SELECT c.endpoint, c.delivered_id, c.pruned_through, c.delivered_at, c.deliveries,
       c.failing_since, c.last_error, c.last_error_at,
       greatest(last.id - c.delivered_id, 0) AS pending,
       extract(epoch FROM statement_timestamp() - first.applied_at)::float8 AS lag_seconds
FROM {schema}.webhook_cursors AS c
CROSS JOIN LATERAL (SELECT coalesce(max(id), 0) AS id FROM {schema}.sync_history) AS last
LEFT JOIN LATERAL (
    SELECT applied_at FROM {schema}.sync_history
    WHERE id > greatest(c.delivered_id, c.pruned_through) ORDER BY id LIMIT 1
) AS first ON true
ORDER BY c.endpoint
