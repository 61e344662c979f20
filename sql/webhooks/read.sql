-- The history rows after an endpoint's cursor, oldest first: the candidates for
-- its next request. Values come back as the JSON text stored, sent byte for byte;
-- waited_seconds is measured by the sandbox's clock, which also stamped applied_at.
SELECT id, mapping, source, field, key::text, key_label,
       coalesce(old_value::text, 'null'), coalesce(new_value::text, 'null'),
       changed_at, applied_at,
       extract(epoch FROM statement_timestamp() - applied_at)::float8 AS waited_seconds
FROM {schema}.sync_history
WHERE id > %(after)s
ORDER BY id
LIMIT %(limit)s
