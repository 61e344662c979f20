-- Note a failed request: the first failure of a run starts failing_since.
UPDATE {schema}.webhook_cursors
SET last_error = %(error)s,
    last_error_at = statement_timestamp(),
    failing_since = coalesce(failing_since, statement_timestamp()),
    updated_at = statement_timestamp()
WHERE endpoint = %(endpoint)s
