CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
AS {body_quote}
#variable_conflict use_variable
DECLARE
    -- Keys of the current statement wait in two transaction-local settings: the
    -- buffer holds the payload being filled (key texts joined by commas, or the
    -- word resync), the chunks the full ones (joined by newlines, which JSON
    -- text never contains). The statement trigger sends and clears both. Their
    -- names come from the table's name, so rows of every partition share them.
    buffer_name text := {buffer_setting};
    buffered text := current_setting(buffer_name, true);
    previous text;
    new_key text;
    old_key text;
    chunks text;
BEGIN
    IF buffered = 'resync' THEN
        RETURN NULL;  -- this statement already asks for a full reconcile
    END IF;
    -- A key with a NULL part cannot be matched in the sandbox and is not sent.
    IF TG_OP <> 'DELETE' THEN
        IF NOT ({new_key_has_null}) THEN
            new_key := ({new_key})::text;
        END IF;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        IF NOT ({old_key_has_null}) THEN
            old_key := ({old_key})::text;
        END IF;
        IF old_key = new_key THEN
            old_key := NULL;  -- the key did not change: send it once
        END IF;
    END IF;
    previous := nullif(buffered, '');
    buffered := concat_ws(',', previous, new_key, old_key);
    IF octet_length(buffered) > {key_bytes_per_payload} THEN
        IF octet_length(concat_ws(',', new_key, old_key)) > {key_bytes_per_payload} THEN
            buffered := 'resync';  -- a key too long for any payload: resync instead
        ELSIF previous IS NOT NULL THEN
            -- The payload is full: keep it for the statement trigger, start another.
            chunks := nullif(current_setting({chunks_setting}, true), '');
            IF array_length(string_to_array(chunks, E'\n'), 1) >= {resync_payloads} - 1 THEN
                buffered := 'resync';  -- too many keys to list
                chunks := NULL;
            ELSE
                chunks := concat_ws(E'\n', chunks, previous);
                buffered := concat_ws(',', new_key, old_key);
            END IF;
            PERFORM set_config({chunks_setting}, coalesce(chunks, ''), true);
        END IF;
    END IF;
    PERFORM set_config(buffer_name, buffered, true);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- Never fail the user's statement: warn, and ask for a full reconcile instead.
    RAISE WARNING 'propagator: collecting a changed key failed (% %), requesting a resync',
        SQLSTATE, SQLERRM;
    PERFORM set_config({buffer_setting}, 'resync', true);
    RETURN NULL;
END
{body_quote};
