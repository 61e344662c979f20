-- propagator: the daemon's login role on the SANDBOX database, least privilege.
--
-- On the sandbox the daemon reads the mirrored table (SELECT), updates only the
-- mapped target columns (a column-level UPDATE privilege) and takes an advisory
-- lock to elect the single active writer (advisory locks need no privilege). It
-- can never INSERT, DELETE, TRUNCATE or update any other column.
--
-- Run as the table owner or a superuser, connected to the sandbox database:
--
--   psql "postgresql://dba@sandbox-host/app" \
--        -v role=propagator -v schema=public -v table=jobs \
--        -v update_columns=fab_order \
--        -f deploy/sql/sandbox_roles.sql
--
-- Variables (all optional but the password, which is prompted for when not given,
-- so it stays out of shell history and process lists):
--   role              login role to create or update              (default: propagator)
--   password          its password                                (prompted)
--   schema, table     the sandbox table that is written           (default: public, jobs)
--   update_columns    comma-separated mapped TARGET columns        (default: fab_order)
--   connection_limit  cap on the role's connections                (default: 20)
--   history_schema    only if change history is enabled: a schema the role may
--                     create its history tables in (PROPAGATOR_HISTORY_SCHEMA,
--                     usually "propagator"); leave unset when it is disabled
--
-- Safe to re-run: an existing role gets the new password, and its privileges on the
-- table are reset to exactly SELECT plus UPDATE on update_columns.

\set ON_ERROR_STOP on

\if :{?role}
\else
\set role propagator
\endif
\if :{?schema}
\else
\set schema public
\endif
\if :{?table}
\else
\set table jobs
\endif
\if :{?update_columns}
\else
\set update_columns fab_order
\endif
\if :{?connection_limit}
\else
\set connection_limit 20
\endif
\if :{?password}
\else
\prompt 'Password for the sandbox role: ' password
\endif

SELECT current_database() AS dbname,
       NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'role') AS role_is_new
\gset

BEGIN;

\if :role_is_new
CREATE ROLE :"role" LOGIN PASSWORD :'password';
\else
ALTER ROLE :"role" LOGIN PASSWORD :'password';
\endif

-- No inherited rights, no administrative attributes, a bounded number of sessions.
ALTER ROLE :"role" NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT
    CONNECTION LIMIT :connection_limit;

GRANT CONNECT ON DATABASE :"dbname" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";

-- Exactly SELECT on the table and UPDATE on the mapped columns
-- (REVOKE ALL also drops column privileges left from an earlier run).
REVOKE ALL ON TABLE :"schema".:"table" FROM :"role";
GRANT SELECT ON TABLE :"schema".:"table" TO :"role";

-- One column-level UPDATE grant, each column name quoted as an identifier.
SELECT format(
           'GRANT UPDATE (%s) ON TABLE %I.%I TO %I',
           string_agg(quote_ident(btrim(column_name)), ', ' ORDER BY position),
           :'schema', :'table', :'role'
       )
FROM unnest(string_to_array(:'update_columns', ',')) WITH ORDINALITY AS c(column_name, position)
WHERE btrim(column_name) <> ''
\gexec

\if :{?history_schema}
-- Optional change history: a schema of its own, where the role creates and prunes
-- its tables (`propagator setup`). Rights here give none on any other schema.
CREATE SCHEMA IF NOT EXISTS :"history_schema";
GRANT USAGE, CREATE ON SCHEMA :"history_schema" TO :"role";
\endif

COMMIT;

\echo 'Privileges of' :"role" 'on' :"schema".:"table" '(sandbox):'
SELECT grantee, table_schema, table_name, privilege_type
FROM information_schema.role_table_grants
WHERE grantee = :'role'
ORDER BY table_schema, table_name, privilege_type;
SELECT grantee, table_schema, table_name, column_name, privilege_type
FROM information_schema.column_privileges
WHERE grantee = :'role' AND privilege_type = 'UPDATE'
ORDER BY table_schema, table_name, column_name;
