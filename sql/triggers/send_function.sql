CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
AS {body_quote}
#variable_conflict use_variable
DECLARE
    buffered text := current_setting({buffer_setting}, true);
    chunks text;
    stamp text;
    chunk text;
    done text;
BEGIN
    IF buffered = '' OR buffered IS NULL THEN
        RETURN NULL;  -- no watched column changed in this statement
    END IF;
    BEGIN
        -- Results are assigned rather than PERFORMed: an assignment is evaluated
        -- without starting the executor, which is most of this function's cost.
        done := set_config({buffer_setting}, '', true);
        IF current_setting({chunks_setting}, true) <> ''
           OR pg_notification_queue_usage() >= {queue_usage_limit} THEN
            -- More than one payload, a resync, or a NOTIFY queue filling up.
            chunks := coalesce(current_setting({chunks_setting}, true), '');
            done := set_config({chunks_setting}, '', true);
            -- A full NOTIFY queue would make COMMIT fail; rather stay silent and
            -- let the daemon's periodic reconcile repair the sandbox.
            IF pg_notification_queue_usage() >= {queue_usage_limit} THEN
                RAISE WARNING 'propagator: NOTIFY queue is % full, change on % not announced',
                    round((pg_notification_queue_usage() * 100)::numeric, 1) || '%', TG_TABLE_NAME;
                RETURN NULL;
            END IF;
            stamp := extract(epoch FROM clock_timestamp())::text;
            IF chunks = 'resync' THEN
                PERFORM pg_notify({channel}, '{{"v":1,"t":' || stamp || ',"resync":true}}');
                RETURN NULL;
            END IF;
            FOREACH chunk IN ARRAY string_to_array(chunks, E'\n') LOOP
                PERFORM pg_notify({channel}, '{{"v":1,"t":' || stamp || ',"k":[' || chunk || ']}}');
            END LOOP;
            PERFORM pg_notify({channel}, '{{"v":1,"t":' || stamp || ',"k":[' || buffered || ']}}');
            RETURN NULL;
        END IF;
        -- The common case: one payload. The time is when the statement ended.
        done := pg_notify({channel},
            '{{"v":1,"t":' || extract(epoch FROM clock_timestamp()) || ',"k":[' || buffered || ']}}')::text;
    EXCEPTION WHEN OTHERS THEN
        -- Never fail the user's statement: warn, and ask for a full reconcile instead.
        RAISE WARNING 'propagator: change notification failed (% %), requesting a resync',
            SQLSTATE, SQLERRM;
        BEGIN
            PERFORM set_config({buffer_setting}, '', true);
            PERFORM set_config({chunks_setting}, '', true);
            PERFORM pg_notify({channel},
                '{{"v":1,"t":' || extract(epoch FROM clock_timestamp()) || ',"resync":true}}');
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'propagator: resync request failed too (% %)', SQLSTATE, SQLERRM;
        END;
    END;
    RETURN NULL;
END
{body_quote};
