-- propagator change history, migration 2: which mapping wrote each row.
--
-- Several named mappings ([[mappings]] in the config file) may write into one
-- sandbox, and then share this table; each row now names its mapping, so reads
-- can ask for one mapping and retention prunes each mapping's own rows.
--
--   mapping     the [[mappings]] name; "default" without [[mappings]]
--
-- The constant default fills the existing rows without rewriting the table
-- (they were all written by the one mapping there was), and keeps a writer of
-- the previous release recording "default" during an upgrade.

ALTER TABLE {schema}.sync_history
    ADD COLUMN mapping text COLLATE "C" NOT NULL DEFAULT 'default';

-- "What did this mapping change", newest first; retention walks it oldest first.
CREATE INDEX sync_history_mapping ON {schema}.sync_history (mapping, id);
