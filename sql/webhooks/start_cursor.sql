-- A new endpoint starts at the newest history row: it is told about changes from
-- now on (`propagator webhooks replay` sends older ones). An existing cursor stays.
INSERT INTO {schema}.webhook_cursors (endpoint, delivered_id)
SELECT %(endpoint)s, coalesce(max(id), 0) FROM {schema}.sync_history
ON CONFLICT (endpoint) DO NOTHING
