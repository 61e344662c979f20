-- The UPDATE triggers, in the form this table allows.
DO {body_quote}
BEGIN
    IF EXISTS (
        {before_update_triggers}
    ) THEN
        -- Another BEFORE UPDATE trigger may change a watched column unnamed: watch every UPDATE.
        EXECUTE {update_every};
        EXECUTE {send_every};
    ELSE
        -- Only an UPDATE naming a watched column queues anything.
        EXECUTE {update_named};
        EXECUTE {send_named};
    END IF;
END
{body_quote};
