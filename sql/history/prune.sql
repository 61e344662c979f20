-- Retention: delete at most %(batch_rows)s rows older than %(cutoff)s, whatever
-- their mapping (retention is one setting; a removed or renamed mapping's rows age
-- out too). Run repeatedly, each in its own short transaction, so pruning never
-- holds locks long or bloats one huge delete.
--
-- Rows a webhook endpoint has not received yet (any endpoint with a cursor here,
-- configured in this process or not: another deployment may send it, or it may
-- come back) are kept, unless they are older than %(hold_cutoff)s (webhook_hold_max
-- past the retention): those go, and the endpoints that missed them are told
-- (webhook_cursors.pruned_through) in their next request.
WITH gone AS (
    DELETE FROM {schema}.sync_history
    WHERE id IN (
        SELECT id FROM {schema}.sync_history
        WHERE applied_at < %(cutoff)s
          AND (applied_at < %(hold_cutoff)s OR id <= coalesce(
                (SELECT min(greatest(delivered_id, pruned_through))
                 FROM {schema}.webhook_cursors),
                9223372036854775807))
        ORDER BY id  -- ids grow with applied_at: the oldest rows come first
        LIMIT %(batch_rows)s
    )
    RETURNING id
),
summary AS (SELECT count(*) AS deleted, max(id) AS last_id FROM gone),
told AS (
    UPDATE {schema}.webhook_cursors AS c
    SET pruned_through = s.last_id, updated_at = statement_timestamp()
    FROM summary AS s
    WHERE s.last_id IS NOT NULL
      AND greatest(c.delivered_id, c.pruned_through) < s.last_id
    RETURNING c.endpoint
)
SELECT deleted, (SELECT count(*) FROM told) FROM summary
