-- propagator: the daemon's login role on the PRODUCTION database, least privilege.
--
-- The daemon only reads production: it SELECTs the mirrored table and LISTENs on
-- the notification channel (LISTEN and NOTIFY need no privilege). Its sessions in
-- this database are read-only by default, so even a bug cannot write production.
-- Installing the change trigger is NOT this role's job: a DBA runs
-- `propagator triggers install` once, with a role that owns the table.
--
-- With logical capture (capture = logical, PROPAGATOR_CAPTURE=logical) the daemon
-- streams a replication slot instead of LISTENing, which needs the REPLICATION
-- attribute: pass -v capture=logical. The role still only SELECTs the mirrored
-- table, but REPLICATION is a strong attribute: with a `replication` line in
-- pg_hba.conf the role could copy the whole server (pg_basebackup), and a slot with
-- another output plugin decodes changes of every table. Logical capture needs no
-- such line: its connections (replication=database) match the database's own
-- pg_hba.conf lines, so keep the `replication` lines closed to this role. Each
-- stream also takes one of max_wal_senders. Granting REPLICATION needs a superuser
-- (from PostgreSQL 16 also a role with CREATEROLE, REPLICATION and ADMIN on this
-- role). Creating the publication is NOT this role's job: the table owner runs
-- `propagator capture install` once.
--
-- Run as the table owner or a superuser, connected to the production database:
--
--   psql "postgresql://dba@prod-host/app" \
--        -v role=propagator -v schema=public -v table=jobs \
--        -f deploy/sql/production_roles.sql
--
-- and for logical capture, as a superuser:
--
--   psql "postgresql://postgres@prod-host/app" \
--        -v role=propagator -v schema=public -v table=jobs -v capture=logical \
--        -f deploy/sql/production_roles.sql
--
-- Variables (all optional but the password, which is prompted for when not given,
-- so it stays out of shell history and process lists):
--   role              login role to create or update       (default: propagator)
--   password          its password                         (prompted)
--   schema, table     the production table that is mirrored (default: public, jobs)
--   connection_limit  cap on the role's connections         (default: 20)
--   capture           notify, or logical for the REPLICATION attribute
--                                                         (default: notify)
--
-- Safe to re-run: an existing role gets the new password, and its privileges on the
-- table are reset to exactly SELECT (and its REPLICATION attribute to what capture
-- asks for: re-run with capture=notify to take it away again).

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
\if :{?connection_limit}
\else
\set connection_limit 20
\endif
\if :{?capture}
\else
\set capture notify
\endif
\if :{?password}
\else
\prompt 'Password for the production role: ' password
\endif

SELECT :'capture' IN ('notify', 'logical') AS capture_known,
       :'capture' = 'logical' AS logical_capture
\gset
\if :capture_known
\else
\echo 'capture must be notify or logical, not' :'capture'
DO $$ BEGIN RAISE EXCEPTION 'capture must be notify or logical'; END $$;
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

\if :logical_capture
-- Logical capture: the daemon creates its slot when it is missing and streams it.
ALTER ROLE :"role" REPLICATION;
\endif

-- Every session of this role in this database starts read-only.
ALTER ROLE :"role" IN DATABASE :"dbname" SET default_transaction_read_only = on;

GRANT CONNECT ON DATABASE :"dbname" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";

-- Exactly SELECT on the mirrored table (REVOKE ALL also drops column privileges).
REVOKE ALL ON TABLE :"schema".:"table" FROM :"role";
GRANT SELECT ON TABLE :"schema".:"table" TO :"role";

COMMIT;

\echo 'Privileges of' :"role" 'on' :"schema".:"table" '(production):'
SELECT grantee, table_schema, table_name, privilege_type
FROM information_schema.role_table_grants
WHERE grantee = :'role'
ORDER BY table_schema, table_name, privilege_type;
SELECT rolname AS role, rolreplication AS replication
FROM pg_catalog.pg_roles
WHERE rolname = :'role';
