-- The history migrations already applied to this schema.
SELECT version FROM {schema}.schema_version
