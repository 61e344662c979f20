-- The functions compare watched columns with IS DISTINCT FROM, which needs an
-- equality operator; json, point and xml have none, and such a column would turn
-- every UPDATE into a warning and a full resync. Refuse to install instead.
DO {body_quote}
DECLARE
    column_name text;
    column_type text;
    missing text[] := '{{}}';
BEGIN
    FOR column_name, column_type IN
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = {table_text}::regclass
          AND a.attnum > 0
          AND NOT a.attisdropped
          AND a.attname = ANY ({compared_columns})
        ORDER BY a.attnum
    LOOP
        BEGIN
            EXECUTE format('SELECT NULL::%s IS DISTINCT FROM NULL::%s', column_type, column_type);
        EXCEPTION WHEN undefined_function THEN
            missing := missing || column_name;
        END;
    END LOOP;
    IF cardinality(missing) > 0 THEN
        RAISE EXCEPTION 'propagator: watched column(s) % have no equality operator',
                array_to_string(missing, ', ')
            USING HINT = 'Install with `propagator triggers install`, or render this script with '
                || '`propagator triggers sql'
                || (SELECT string_agg(' --compare-as-jsonb '''
                                      || replace(m, '''', '''\''''') || '''', '')
                    FROM unnest(missing) AS m)  -- quoted for the shell
                || '` (it compares those columns as jsonb).';
    END IF;
END
{body_quote};
