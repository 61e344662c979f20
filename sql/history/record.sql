-- One batch of history rows, set-based: five parallel arrays become one INSERT.
-- Called inside the sandbox transaction that applied the changes, by the one
-- mapping that made them. The arrays travel in binary format (the "b"
-- placeholders): a large text-format array costs about ten times more to send
-- and parse than the insert itself.
INSERT INTO {schema}.sync_history
    (batch_id, source, mapping, changed_at, key, key_label, field, old_value, new_value)
SELECT %(batch_id)s, %(source)s, %(mapping)s, %(changed_at)s,
       v.key::jsonb, v.key_label, v.field, v.old_value::jsonb, v.new_value::jsonb
FROM unnest(%(keys)b::text[], %(key_labels)b::text[], %(fields)b::text[],
            %(old_values)b::text[], %(new_values)b::text[])
     AS v(key, key_label, field, old_value, new_value)
