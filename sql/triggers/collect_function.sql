CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql
AS {body_quote}
#variable_conflict use_variable
DECLARE
    -- Keys of the current statement wait in two transaction-local settings: the
    -- buffer holds the payload being filled (key texts joined by commas), the
    -- chunks the full ones (joined by newlines, which key texts never contain),
    -- or the word resync. The statement trigger sends and clears both. Their
    -- names come from the table's name, so rows of every partition share them.
    --
    -- Cost matters here: this runs once per changed row on production. The
    -- common path is a few simple expressions, each evaluated without starting
    -- the executor (assignments and IF conditions, never PERFORM or SELECT);
    -- the rare paths below cost nothing until they run.
    keys text;
    buffered text;
    chunks text;
BEGIN
    -- A key with a NULL part cannot be matched in the sandbox and is not sent:
    -- the key text is built with strict operators, so such a key is NULL.
    IF TG_OP = 'UPDATE' THEN
        IF {key_changed} THEN
            keys := nullif(concat_ws(',', {new_key}, {old_key}), '');  -- the old and the new key
        ELSIF {values_unchanged} THEN
            RETURN NULL;  -- no watched column really changed
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        keys := {old_key};
    END IF;
    -- Still NULL for an INSERT or an UPDATE of a value column: the new key, computed
    -- inside the one expression that appends it.
    IF octet_length(set_config({buffer_setting},
            concat_ws(',', nullif(current_setting({buffer_setting}, true), ''),
                      coalesce(keys, {new_key})),
            true)) > {key_bytes_per_payload} THEN
        -- The payload is full: this row's keys start the next one.
        keys := coalesce(keys, {new_key});
        buffered := current_setting({buffer_setting});
        chunks := nullif(current_setting({chunks_setting}, true), '');
        IF chunks = 'resync' THEN
            buffered := 'resync';  -- this statement already asks for a full reconcile
        ELSIF octet_length(keys) > {key_bytes_per_payload}
              OR array_length(string_to_array(chunks, E'\n'), 1) >= {resync_payloads} - 1 THEN
            -- A key too long for any payload, or too many keys to list.
            chunks := 'resync';
            buffered := 'resync';
        ELSE
            chunks := concat_ws(E'\n', chunks, left(buffered, length(buffered) - length(keys) - 1));
            buffered := keys;
        END IF;
        PERFORM set_config({chunks_setting}, chunks, true);
        PERFORM set_config({buffer_setting}, buffered, true);
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- Never fail the user's statement: warn, and ask for a full reconcile instead.
    RAISE WARNING 'propagator: collecting a changed key failed (% %), requesting a resync',
        SQLSTATE, SQLERRM;
    PERFORM set_config({chunks_setting}, 'resync', true);
    PERFORM set_config({buffer_setting}, 'resync', true);
    RETURN NULL;
END
{body_quote};
