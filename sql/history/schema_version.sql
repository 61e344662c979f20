-- Which history migrations have been applied (one row per migration).
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
