-- Move an endpoint's cursor forward after a 2xx (or past rows its filters skip).
-- Only from where this sender last saw it: a replay that moved it meanwhile wins.
UPDATE {schema}.webhook_cursors
SET delivered_id = %(to)s,
    updated_at = statement_timestamp(),
    delivered_at = CASE WHEN %(sent)s THEN statement_timestamp() ELSE delivered_at END,
    deliveries = deliveries + CASE WHEN %(sent)s THEN 1 ELSE 0 END,
    failing_since = CASE WHEN %(sent)s THEN NULL ELSE failing_since END
WHERE endpoint = %(endpoint)s AND delivered_id = %(from)s
