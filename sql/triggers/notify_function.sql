CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
AS {body_quote}
#variable_conflict use_variable
DECLARE
    -- When the change happened: end of the statement, before commit.
    stamp text := extract(epoch FROM clock_timestamp())::text;
    items text[];
    payload text;
BEGIN
    -- A full NOTIFY queue would make COMMIT fail; rather stay silent and let the
    -- daemon's periodic reconcile repair the sandbox.
    IF pg_notification_queue_usage() >= {queue_usage_limit} THEN
        RAISE WARNING 'propagator: NOTIFY queue % full, % on % not announced',
            round((pg_notification_queue_usage() * 100)::numeric, 1) || '%', TG_OP, TG_TABLE_NAME;
        RETURN NULL;
    END IF;

    -- Keys (JSON arrays of to_jsonb() of each key column) that may have changed.
    -- A key with a NULL part cannot be matched in the sandbox and is not sent.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(changed.key_item::text)
        INTO items
        FROM (SELECT DISTINCT {new_key}
              FROM propagator_new AS n
              WHERE NOT {new_key} @> '[null]'
              LIMIT {resync_key_count} + 1) AS changed(key_item);
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(changed.key_item::text)
        INTO items
        FROM (SELECT DISTINCT {old_key}
              FROM propagator_old AS o
              WHERE NOT {old_key} @> '[null]'
              LIMIT {resync_key_count} + 1) AS changed(key_item);
    ELSE
        -- UPDATE: old and new rows are matched by key; a row counts only if a
        -- watched column is really different (compared as jsonb, which every
        -- type converts to: NULL = NULL, 500 = 500.0). A row whose key changed
        -- matches nothing, so both its old and its new key are sent.
        SELECT array_agg(changed.key_item::text)
        INTO items
        FROM (SELECT DISTINCT k.key_item
              FROM propagator_new AS n
              FULL JOIN propagator_old AS o ON {key_match}
              CROSS JOIN LATERAL (
                  SELECT CASE WHEN {new_side_missing} THEN {old_key} ELSE {new_key} END
              ) AS k(key_item)
              WHERE ({unmatched} OR {old_watched} IS DISTINCT FROM {new_watched})
                AND NOT k.key_item @> '[null]'
              LIMIT {resync_key_count} + 1) AS changed(key_item);
    END IF;

    IF items IS NULL THEN
        RETURN NULL;  -- nothing watched changed: no notification at all
    END IF;

    IF cardinality(items) > {resync_key_count} THEN
        PERFORM pg_notify({channel}, '{{"v":1,"t":' || stamp || ',"resync":true}}');
        RETURN NULL;
    END IF;

    -- Chunks of keys, each payload under the 8000-byte NOTIFY limit: a key goes
    -- to the chunk its starting byte offset falls in, and chunks are spaced so
    -- that even the longest key fits. A single key longer than
    -- {max_key_bytes} bytes turns the whole statement into one resync request.
    FOR payload IN
        WITH sized AS (
            SELECT key_item, octet_length(key_item) + 1 AS size
            FROM unnest(items) AS key_item
        ), placed AS (
            SELECT key_item,
                   sum(size) OVER (ROWS UNBOUNDED PRECEDING) - size AS start_at,
                   max(size) OVER () AS longest
            FROM sized
        )
        SELECT CASE
                   WHEN longest > {max_key_bytes} THEN '{{"v":1,"t":' || stamp || ',"resync":true}}'
                   ELSE '{{"v":1,"t":' || stamp || ',"k":[' || string_agg(key_item, ',') || ']}}'
               END
        FROM placed
        GROUP BY longest,
                 CASE WHEN longest > {max_key_bytes} THEN -1
                      ELSE start_at / ({key_bytes_per_payload} - longest) END
    LOOP
        PERFORM pg_notify({channel}, payload);
    END LOOP;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- Never fail the user's statement: warn, and ask for a full reconcile instead.
    RAISE WARNING 'propagator: change notification failed (% %), requesting a resync',
        SQLSTATE, SQLERRM;
    BEGIN
        PERFORM pg_notify({channel}, '{{"v":1,"t":' || stamp || ',"resync":true}}');
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'propagator: resync request failed too (% %)', SQLSTATE, SQLERRM;
    END;
    RETURN NULL;
END
{body_quote};
