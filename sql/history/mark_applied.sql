-- Records one migration as applied, in the transaction that applied it.
INSERT INTO {schema}.schema_version (version, name) VALUES (%(version)s, %(name)s)
