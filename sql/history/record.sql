-- One batch of history rows, set-based: five parallel arrays become one INSERT.
-- Called inside the sandbox transaction that applied the changes.
INSERT INTO {schema}.sync_history
    (batch_id, source, changed_at, key, key_label, field, old_value, new_value)
SELECT %(batch_id)s, %(source)s, %(changed_at)s,
       v.key::jsonb, v.key_label, v.field, v.old_value::jsonb, v.new_value::jsonb
FROM unnest(%(keys)s::text[], %(key_labels)s::text[], %(fields)s::text[],
            %(old_values)s::text[], %(new_values)s::text[])
     AS v(key, key_label, field, old_value, new_value)
