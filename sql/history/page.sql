-- One page of history, newest first. The conditions (mapping, key, field,
-- source, time range, and the id cursor of the page before) are added only for
-- the filters given; the page asks for one row more than it shows, to know
-- whether an older page exists. Values come back as JSON text, exactly as stored.
SELECT id, batch_id, source, changed_at, applied_at, key::text, key_label, field,
       old_value::text, new_value::text, mapping
FROM {schema}.sync_history{where}
ORDER BY id DESC
LIMIT %(limit)s
