DO $propagator_cleanup$
DECLARE
    target regclass := to_regclass(current_setting('propagator.trigger_table'));
    keep_collect regprocedure := to_regprocedure(nullif(current_setting('propagator.keep_collect'), ''));
    keep_send regprocedure := to_regprocedure(nullif(current_setting('propagator.keep_send'), ''));
    managed record;
    used oid[] := '{}';
BEGIN
    IF target IS NULL THEN
        RETURN;
    END IF;
    -- Ours are the triggers whose function carries propagator's description.
    FOR managed IN
        SELECT t.tgname, t.tgfoid
        FROM pg_trigger AS t
        WHERE t.tgrelid = target
          AND NOT t.tgisinternal
          AND starts_with(coalesce(obj_description(t.tgfoid, 'pg_proc'), ''),
                          '{"managed_by": "propagator"')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', managed.tgname, target);
        used := used || managed.tgfoid;
    END LOOP;
    FOR managed IN
        SELECT DISTINCT f.oid
        FROM unnest(used) AS f(oid)
        WHERE f.oid IS DISTINCT FROM keep_collect
          AND f.oid IS DISTINCT FROM keep_send
          AND NOT EXISTS (SELECT FROM pg_trigger AS t WHERE t.tgfoid = f.oid)
    LOOP
        EXECUTE format('DROP FUNCTION %s', managed.oid::regprocedure);
    END LOOP;
END
$propagator_cleanup$;
