-- propagator change history, migration 4: webhook cursors.
--
-- The history is the outbox webhooks are sent from. Each endpoint ([[webhooks]]
-- in the config file) has one row here per sandbox history it reads:
--
--   endpoint        the [[webhooks]] name
--   delivered_id    the highest history id this endpoint has acknowledged (2xx) or
--                   was passed over by its filters; delivery resumes after it
--   pruned_through  history up to this id was pruned before the endpoint got it
--                   (held longer than webhook_hold_max): its next request says so
--   delivered_at    when the last request was acknowledged
--   failing_since   the first failure of the current run of failures (NULL: healthy)
--   last_error      the last failure, one short line (no secrets, a short prefix
--                   of the receiver's answer at most)
--
-- The cursor only moves forward after a 2xx answer; `propagator webhooks replay`
-- moves it back. Retention keeps the rows an endpoint has not received yet.

CREATE TABLE {schema}.webhook_cursors (
    endpoint        text COLLATE "C" PRIMARY KEY,
    delivered_id    bigint      NOT NULL CHECK (delivered_id >= 0),
    pruned_through  bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT statement_timestamp(),
    delivered_at    timestamptz,
    deliveries      bigint      NOT NULL DEFAULT 0,
    failing_since   timestamptz,
    last_error      text,
    last_error_at   timestamptz
);

COMMENT ON TABLE {schema}.webhook_cursors IS
    'propagator: how far each webhook endpoint has received this sandbox''s sync history';
