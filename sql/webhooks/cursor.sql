-- An endpoint's cursor, and the newest history id (how much is still to send).
SELECT c.delivered_id, c.pruned_through,
       (SELECT coalesce(max(id), 0) FROM {schema}.sync_history) AS last_id
FROM {schema}.webhook_cursors AS c
WHERE c.endpoint = %(endpoint)s
