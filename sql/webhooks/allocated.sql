-- The highest history id handed out so far, committed or not (read before writers.sql).
SELECT coalesce(
    pg_sequence_last_value(pg_get_serial_sequence(format('%%I.sync_history', %(schema)s::text), 'id')),
    0)
