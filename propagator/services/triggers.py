"""The production change triggers: render, install, uninstall and inspect them.

The SQL lives in ``sql/triggers/*.sql`` so a DBA can read it, or print it with
``propagator triggers sql`` and apply it by hand; every name from configuration
is filled in with ``psycopg.sql`` (identifiers quoted, values as literals), so a
hostile table or column name can never become SQL. What is installed carries a
JSON description (version, channel, columns) that ``status`` reads back.

Design (chosen by ``bench/trigger_overhead.py``): row triggers collect keys
into transaction-local settings and statement triggers send them in chunks, so
a statement touching many rows still sends one notification per ~8000 bytes of
keys. The UPDATE triggers carry a column list (``UPDATE OF`` the watched
columns): an UPDATE whose SET list names none of them queues no trigger at all.
``WHEN`` clauses are avoided on that path because PostgreSQL prepares them again
for every statement, which costs more than the PL/pgSQL call they would save;
the collector checks ``IS DISTINCT FROM`` itself in a few simple expressions.
Only when another BEFORE UPDATE row trigger could change a watched column
without naming it does the install fall back to watching every UPDATE, gated by
``WHEN``; the installed SQL decides that itself, so a DBA's hand-applied script
does the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.postgres import describe_table, translate_error
from propagator.core.identifiers import QualifiedName
from propagator.errors import PropagatorError, SchemaError, TransientError
from propagator.settings import Settings
from propagator.sql import load_sql
from propagator.version import __version__

__all__ = [
    "KEY_BYTES_PER_PAYLOAD",
    "RESYNC_PAYLOADS",
    "TRIGGER_VERSION",
    "TriggerNames",
    "TriggerStatus",
    "install",
    "render_install_sql",
    "render_uninstall_sql",
    "status",
    "trigger_names",
    "uninstall",
]

TRIGGER_VERSION = 3
"""Bumped whenever the installed SQL changes meaning; ``status`` compares it."""

RESYNC_PAYLOADS = 25
"""More keys than fit in this many payloads (~10,000 short keys): one resync request instead."""

KEY_BYTES_PER_PAYLOAD = 7_900
"""Room for keys in one payload: with the header (< 60 bytes) it stays under 8000.

A single key longer than this cannot be listed: its statement sends a resync.
"""

QUEUE_USAGE_LIMIT = 0.9
"""Above this NOTIFY queue usage the trigger stays silent rather than risk failing COMMIT."""

MANAGED_MARKER = '{"managed_by": "propagator"'
Connection = psycopg.Connection[tuple[Any, ...]]
_MAX_NAME_BYTES = 63
_BODY_QUOTE = "propagator_notify"


@dataclass(frozen=True, slots=True)
class TriggerNames:
    """Names of everything installed for one table, derived from the table's name."""

    table: QualifiedName
    collect_function: QualifiedName
    send_function: QualifiedName
    insert_trigger: str
    update_trigger: str
    delete_trigger: str
    send_trigger: str
    send_update_trigger: str

    @property
    def triggers(self) -> tuple[str, ...]:
        return (
            self.insert_trigger,
            self.update_trigger,
            self.delete_trigger,
            self.send_trigger,
            self.send_update_trigger,
        )

    @property
    def functions(self) -> tuple[QualifiedName, ...]:
        return (self.collect_function, self.send_function)


@dataclass(frozen=True, slots=True)
class TriggerStatus:
    """What is installed on the production table, and whether it matches this release."""

    table: str
    installed: bool
    version: int | None
    channel: str | None
    key_columns: tuple[str, ...]
    watched_columns: tuple[str, ...]
    triggers: tuple[str, ...]
    functions: tuple[str, ...]
    current: bool
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "installed": self.installed,
            "current": self.current,
            "version": self.version,
            "expected_version": TRIGGER_VERSION,
            "channel": self.channel,
            "key_columns": list(self.key_columns),
            "watched_columns": list(self.watched_columns),
            "triggers": list(self.triggers),
            "functions": list(self.functions),
            "problems": list(self.problems),
        }


def _object_name(prefix: str, base: str, suffix: str = "") -> str:
    """``prefix + base + suffix`` within 63 bytes; a long base is cut and hashed, never clipped.

    PostgreSQL silently truncates longer names, which could make two tables'
    objects collide; cutting on a character boundary and appending a hash of the
    full name keeps them distinct and valid UTF-8.
    """
    name = f"{prefix}{base}{suffix}"
    if len(name.encode("utf-8")) <= _MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(base.encode("utf-8")).hexdigest()[:8]
    room = _MAX_NAME_BYTES - len(f"{prefix}{suffix}_{digest}".encode())
    cut = base.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return f"{prefix}{cut}_{digest}{suffix}"


def trigger_names(settings: Settings) -> TriggerNames:
    table = settings.production_table_name
    return TriggerNames(
        table=table,
        collect_function=QualifiedName(
            table.schema, _object_name("propagator_collect_", table.name)
        ),
        send_function=QualifiedName(table.schema, _object_name("propagator_send_", table.name)),
        insert_trigger=_object_name("propagator_", table.name, "_insert"),
        update_trigger=_object_name("propagator_", table.name, "_update"),
        delete_trigger=_object_name("propagator_", table.name, "_delete"),
        send_trigger=_object_name("propagator_", table.name, "_send"),
        send_update_trigger=_object_name("propagator_", table.name, "_send_update"),
    )


def _template(name: str) -> str:
    return str(load_sql(f"triggers/{name}"))


def _identifier(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(*name.parts())


def _text(composable: sql.Composable) -> str:
    return composable.as_string(None)


def _comment_text(value: Any) -> sql.SQL:
    """A value shown inside a ``--`` comment: JSON with every control character escaped."""
    return sql.SQL(json.dumps(value, ensure_ascii=True))


def _description(settings: Settings) -> str:
    spec = settings.mapping_spec
    return json.dumps(
        {
            "managed_by": "propagator",
            "version": TRIGGER_VERSION,
            "release": __version__,
            "channel": settings.channel,
            "key_columns": list(spec.key_columns),
            "watched_columns": list(spec.watched_columns),
        }
    )


def _column(row: str, column: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.SQL(row), sql.Identifier(column))


def _key_text(
    row: str, columns: tuple[str, ...], compare_as_jsonb: Collection[str]
) -> sql.Composable:
    """A key as JSON text, ``[1,"A"]``; NULL when any part is NULL (``||`` is strict).

    ``to_json`` is measurably cheaper than ``to_jsonb`` on this path. Only a json
    value comes out of ``to_json`` verbatim, possibly with raw newlines (which
    separate full payloads); json has no ``=``, so such columns are among
    ``compare_as_jsonb`` and go through ``to_jsonb``, whose text has none.
    """
    parts = sql.SQL(" || ',' || ").join(
        sql.SQL("to_jsonb({})::text" if c in compare_as_jsonb else "to_json({})::text").format(
            _column(row, c)
        )
        for c in columns
    )
    return sql.SQL("('[' || {} || ']')").format(parts)


def _comparisons(
    columns: Collection[str], compare_as_jsonb: Collection[str], operator: str
) -> list[sql.Composable]:
    """``OLD.c <operator> NEW.c`` per column; types without ``=`` (json, point, xml) as jsonb."""
    tests: list[sql.Composable] = []
    for column in columns:
        if column in compare_as_jsonb:
            test = sql.SQL("to_jsonb({}) " + operator + " to_jsonb({})")
        else:
            test = sql.SQL("{} " + operator + " {}")
        tests.append(test.format(_column("OLD", column), _column("NEW", column)))
    return tests


def _watched_changed(settings: Settings, compare_as_jsonb: Collection[str]) -> sql.Composable:
    """A watched column really differs (NULL-safe): the WHEN of the every-UPDATE form."""
    tests = _comparisons(
        settings.mapping_spec.watched_columns, compare_as_jsonb, "IS DISTINCT FROM"
    )
    return sql.SQL(" OR ").join(tests)


def _key_changed(settings: Settings, compare_as_jsonb: Collection[str]) -> sql.Composable:
    tests = _comparisons(settings.mapping_spec.key_columns, compare_as_jsonb, "IS DISTINCT FROM")
    return sql.SQL(" OR ").join(tests)


def _values_unchanged(settings: Settings, compare_as_jsonb: Collection[str]) -> sql.Composable:
    """No watched column other than the key differs; ``true`` when only keys are watched."""
    spec = settings.mapping_spec
    values = [c for c in spec.watched_columns if c not in spec.key_columns]
    tests = _comparisons(values, compare_as_jsonb, "IS NOT DISTINCT FROM")
    return sql.SQL(" AND ").join(tests) if tests else sql.SQL("true")


def _dollar_quoted(template: sql.SQL, **values: sql.Composable) -> tuple[str, str]:
    """A function definition and the dollar quote around its body.

    A name containing the quote would end the body early, so a tag that occurs
    nowhere in the rendered text is chosen.
    """
    attempt = 0
    while True:
        quote = f"${_BODY_QUOTE}{'_' + str(attempt) if attempt else ''}$"
        rendered = _text(template.format(body_quote=sql.SQL(quote), **values))
        if rendered.count(quote) == 2:
            return rendered, quote
        attempt += 1


def _settings_names(names: TriggerNames) -> tuple[str, str]:
    """The transaction-local settings holding a statement's keys, named after the table."""
    digest = hashlib.sha256(_text(_identifier(names.table)).encode("utf-8")).hexdigest()[:16]
    return f"propagator.buffer_{digest}", f"propagator.chunks_{digest}"


def _collect_function(
    settings: Settings, names: TriggerNames, compare_as_jsonb: Collection[str]
) -> tuple[str, str]:
    keys = settings.mapping_spec.key_columns
    buffer_setting, chunks_setting = _settings_names(names)
    return _dollar_quoted(
        sql.SQL(_template("collect_function.sql")),
        function=_identifier(names.collect_function),
        buffer_setting=sql.Literal(buffer_setting),
        chunks_setting=sql.Literal(chunks_setting),
        new_key=_key_text("NEW", keys, compare_as_jsonb),
        old_key=_key_text("OLD", keys, compare_as_jsonb),
        key_changed=_key_changed(settings, compare_as_jsonb),
        values_unchanged=_values_unchanged(settings, compare_as_jsonb),
        key_bytes_per_payload=sql.Literal(KEY_BYTES_PER_PAYLOAD),
        resync_payloads=sql.Literal(RESYNC_PAYLOADS),
    )


def _send_function(settings: Settings, names: TriggerNames) -> tuple[str, str]:
    buffer_setting, chunks_setting = _settings_names(names)
    return _dollar_quoted(
        sql.SQL(_template("send_function.sql")),
        function=_identifier(names.send_function),
        buffer_setting=sql.Literal(buffer_setting),
        chunks_setting=sql.Literal(chunks_setting),
        channel=sql.Literal(settings.channel),
        queue_usage_limit=sql.Literal(QUEUE_USAGE_LIMIT),
    )


def _cleanup() -> sql.SQL:
    return sql.SQL(_template("cleanup.sql").rstrip())


def _before_update_triggers(table: sql.Composable) -> sql.Composed:
    """Other BEFORE UPDATE row triggers on the table or its partitions, by name.

    Such a trigger may change a watched column that the UPDATE's SET list does
    not name, which ``UPDATE OF`` would miss.
    """
    return sql.SQL(
        "SELECT t.tgname FROM pg_catalog.pg_trigger AS t\n"
        "        WHERE t.tgrelid IN (\n"
        "                SELECT {table}::regclass\n"
        "                UNION ALL\n"
        "                SELECT relid FROM pg_catalog.pg_partition_tree({table}::regclass))\n"
        "          AND NOT t.tgisinternal\n"
        "          AND t.tgtype & 19 = 19  -- a ROW (1), BEFORE (2), UPDATE (16) trigger"
    ).format(table=table)


def _update_triggers(
    settings: Settings, names: TriggerNames, compare_as_jsonb: Collection[str]
) -> str:
    """The block creating the UPDATE triggers in the form the table allows, decided at install."""
    table = _identifier(names.table)
    watched = sql.SQL(", ").join(sql.Identifier(c) for c in settings.mapping_spec.watched_columns)
    collect, send = _identifier(names.collect_function), _identifier(names.send_function)
    row, statement = sql.Identifier(names.update_trigger), sql.Identifier(names.send_update_trigger)

    def statement_literal(template: str, *values: sql.Composable) -> sql.Literal:
        return sql.Literal(_text(sql.SQL(template).format(*values)))

    return _dollar_quoted(
        sql.SQL(_template("update_triggers.sql")),
        before_update_triggers=_before_update_triggers(sql.Literal(_text(table))),
        update_every=statement_literal(
            "CREATE TRIGGER {} AFTER UPDATE ON {} FOR EACH ROW WHEN ({}) EXECUTE FUNCTION {}()",
            row,
            table,
            _watched_changed(settings, compare_as_jsonb),
            collect,
        ),
        send_every=statement_literal(
            "CREATE TRIGGER {} AFTER UPDATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()",
            statement,
            table,
            send,
        ),
        update_named=statement_literal(
            "CREATE TRIGGER {} AFTER UPDATE OF {} ON {} FOR EACH ROW EXECUTE FUNCTION {}()",
            row,
            watched,
            table,
            collect,
        ),
        send_named=statement_literal(
            "CREATE TRIGGER {} AFTER UPDATE OF {} ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}()",
            statement,
            watched,
            table,
            send,
        ),
    )[0].rstrip()


def _comparable_check(settings: Settings, compare_as_jsonb: Collection[str]) -> str:
    """The block refusing to install when a column compared with ``=`` has no such operator."""
    compared = [c for c in settings.mapping_spec.watched_columns if c not in compare_as_jsonb]
    table = _identifier(trigger_names(settings).table)
    return _dollar_quoted(
        sql.SQL(_template("comparable_check.sql")),
        table_text=sql.Literal(_text(table)),
        compared_columns=sql.SQL("ARRAY[{}]::text[]").format(
            sql.SQL(", ").join(sql.Literal(c) for c in compared)
        ),
    )[0].rstrip()


def _signature(name: QualifiedName) -> sql.Literal:
    return sql.Literal(_text(_identifier(name)) + "()")


def _install_statements(settings: Settings, compare_as_jsonb: Collection[str] = ()) -> str:
    names = trigger_names(settings)
    spec = settings.mapping_spec
    table = _identifier(names.table)
    return _text(
        sql.SQL(_template("install.sql")).format(
            version=sql.SQL(str(TRIGGER_VERSION)),
            table_label=_comment_text(str(names.table)),
            channel_label=_comment_text(settings.channel),
            keys_label=_comment_text(list(spec.key_columns)),
            watched_label=_comment_text(list(spec.watched_columns)),
            buffer_label=sql.SQL(_settings_names(names)[0]),
            chunks_label=sql.SQL(_settings_names(names)[1]),
            key_bytes_per_payload=sql.SQL(str(KEY_BYTES_PER_PAYLOAD)),
            resync_payloads=sql.SQL(str(RESYNC_PAYLOADS)),
            collect_function=sql.SQL(_collect_function(settings, names, compare_as_jsonb)[0]),
            send_function=sql.SQL(_send_function(settings, names)[0]),
            table_text=sql.Literal(_text(table)),
            collect_text=_signature(names.collect_function),
            send_text=_signature(names.send_function),
            cleanup=_cleanup(),
            insert_trigger=sql.Identifier(names.insert_trigger),
            delete_trigger=sql.Identifier(names.delete_trigger),
            send_trigger=sql.Identifier(names.send_trigger),
            table=table,
            update_triggers=sql.SQL(_update_triggers(settings, names, compare_as_jsonb)),
            comparable_check=sql.SQL(_comparable_check(settings, compare_as_jsonb)),
            collect=_identifier(names.collect_function),
            send=_identifier(names.send_function),
            description=sql.Literal(_description(settings)),
        )
    )


def _uninstall_statements(settings: Settings) -> str:
    names = trigger_names(settings)
    table = _identifier(names.table)
    return _text(
        sql.SQL(_template("uninstall.sql")).format(
            table_label=_comment_text(str(names.table)),
            insert_trigger=sql.Identifier(names.insert_trigger),
            update_trigger=sql.Identifier(names.update_trigger),
            delete_trigger=sql.Identifier(names.delete_trigger),
            send_trigger=sql.Identifier(names.send_trigger),
            send_update_trigger=sql.Identifier(names.send_update_trigger),
            table=table,
            table_text=sql.Literal(_text(table)),
            cleanup=_cleanup(),
            collect=_identifier(names.collect_function),
            send=_identifier(names.send_function),
        )
    )


def _as_script(statements: str) -> str:
    """One transaction, as a DBA would run it with ``psql -f``."""
    return f"BEGIN;\n\n{statements.rstrip()}\n\nCOMMIT;\n"


def render_install_sql(settings: Settings, *, compare_as_jsonb: Collection[str] = ()) -> str:
    """The install script for the configured table, columns and channel (not executed).

    ``compare_as_jsonb`` names watched columns whose type has no equality
    operator; ``install`` finds them in the catalog.
    """
    return _as_script(_install_statements(settings, compare_as_jsonb))


def render_uninstall_sql(settings: Settings) -> str:
    """The script removing everything ``install`` created (not executed)."""
    return _as_script(_uninstall_statements(settings))


def _incomparable_columns(conn: Connection, settings: Settings) -> list[str]:
    """Watched columns whose type has no ``=`` (json, point, xml), after checking they exist."""
    table = describe_table(conn, settings.production_table_name, "production")
    for column in settings.mapping_spec.key_columns:
        table.column(column, "key")
    for column in settings.mapping_spec.source_columns:
        table.column(column, "mapped")
    incomparable: list[str] = []
    for column in settings.mapping_spec.watched_columns:
        type_sql = table.columns[column].type_sql
        probe = sql.SQL("SELECT NULL::{0} IS DISTINCT FROM NULL::{0}").format(sql.SQL(type_sql))
        try:
            with conn.transaction():
                conn.execute(probe)
        except psycopg.errors.UndefinedFunction:
            incomparable.append(column)
        except psycopg.Error as error:
            raise translate_error(error, "production", f"checking column {column!r}") from None
    return incomparable


def _run(conn: Connection, statements: str, what: str) -> None:
    try:
        with conn.transaction():
            conn.execute(statements.encode("utf-8"))
    except psycopg.errors.LockNotAvailable:
        raise TransientError(
            f"could not lock the production table {what} within 5 s "
            "(a long transaction holds it); try again"
        ) from None
    except psycopg.Error as error:
        raise translate_error(error, "production", what) from None


def install(conn: Connection, settings: Settings) -> None:
    """Install or upgrade the triggers in one transaction; running it again changes nothing."""
    compare_as_jsonb = _incomparable_columns(conn, settings)
    _run(
        conn,
        _install_statements(settings, compare_as_jsonb),
        f"installing triggers on {settings.production_table}",
    )


def uninstall(conn: Connection, settings: Settings) -> None:
    """Remove the triggers and function ``install`` created (and older versions' leftovers)."""
    _run(
        conn,
        _uninstall_statements(settings),
        f"removing triggers from {settings.production_table}",
    )


_TABLE_OID = "SELECT to_regclass(%s)::oid"

_INSTALLED_TRIGGERS = """
SELECT t.tgname, t.tgenabled, p.oid::regprocedure::text, p.prosrc,
       obj_description(p.oid, 'pg_proc'), cardinality(t.tgattr::int2[]) > 0
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_proc AS p ON p.oid = t.tgfoid
WHERE t.tgrelid = %s AND NOT t.tgisinternal
  AND starts_with(coalesce(obj_description(p.oid, 'pg_proc'), ''), %s)
ORDER BY t.tgname
"""

_FUNCTION = """
SELECT p.oid::regprocedure::text, p.prosrc, obj_description(p.oid, 'pg_proc')
FROM pg_catalog.pg_proc AS p
WHERE p.oid = to_regprocedure(%s)
"""


def _body(definition: tuple[str, str]) -> str:
    text, quote = definition
    return text.split(quote, 2)[1]


def _describe(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def status(conn: Connection, settings: Settings) -> TriggerStatus:
    """Read back what is installed and compare it with what this release would install."""
    names = trigger_names(settings)
    spec = settings.mapping_spec
    table_text = _text(_identifier(names.table))
    try:
        with conn.transaction():
            row = conn.execute(_TABLE_OID, (table_text,)).fetchone()
            if row is None or row[0] is None:
                raise SchemaError(f"the production table {names.table} does not exist")
            triggers = conn.execute(_INSTALLED_TRIGGERS, (row[0], MANAGED_MARKER)).fetchall()
            before_update = conn.execute(
                _before_update_triggers(sql.Literal(table_text))
            ).fetchall()
            functions = [
                conn.execute(_FUNCTION, (_text(_identifier(name)) + "()",)).fetchone()
                for name in names.functions
            ]
    except PropagatorError:
        raise
    except psycopg.Error as error:
        raise translate_error(error, "production", "reading the installed triggers") from None

    present = [f for f in functions if f is not None]
    installed = bool(triggers) or bool(present)
    description = _describe(present[0][2] if present else triggers[0][4] if triggers else None)
    version = description.get("version")
    version = version if isinstance(version, int) and not isinstance(version, bool) else None
    channel = description.get("channel") if isinstance(description.get("channel"), str) else None
    keys = tuple(str(c) for c in description.get("key_columns", ()) or ())
    watched = tuple(str(c) for c in description.get("watched_columns", ()) or ())
    found = tuple(str(t[0]) for t in triggers)

    problems: list[str] = []
    if not installed:
        problems.append("not installed")
    else:
        for name, function in zip(names.functions, functions, strict=True):
            if function is None:
                problems.append(f"function {name} is missing")
        if version != TRIGGER_VERSION:
            problems.append(f"installed version {version}, this release installs {TRIGGER_VERSION}")
        if channel != settings.channel:
            problems.append(f"notifies channel {channel!r}, configured {settings.channel!r}")
        if keys != spec.key_columns:
            problems.append(f"key columns {list(keys)}, configured {list(spec.key_columns)}")
        if watched != spec.watched_columns:
            problems.append(
                f"watches columns {list(watched)}, configured {list(spec.watched_columns)}"
            )
        missing = [name for name in names.triggers if name not in found]
        if missing:
            problems.append(f"missing triggers: {', '.join(missing)}")
        obsolete = [name for name in found if name not in names.triggers]
        if obsolete:
            problems.append(f"obsolete triggers: {', '.join(obsolete)}")
        disabled = [str(t[0]) for t in triggers if t[1] == "D"]
        if disabled:
            problems.append(f"disabled triggers: {', '.join(disabled)}")
        named_only = [str(t[0]) for t in triggers if t[5] and str(t[0]) in names.triggers]
        if before_update and named_only:
            problems.append(
                f"{', '.join(named_only)} fire only for UPDATEs naming a watched column, but "
                f"BEFORE UPDATE trigger {', '.join(str(b[0]) for b in before_update)} "
                "may change one unnamed; install again to watch every UPDATE"
            )
        if not problems:
            try:
                compare_as_jsonb = _incomparable_columns(conn, settings)
            except PropagatorError as error:
                problems.append(str(error))
            else:
                expected = (
                    _body(_collect_function(settings, names, compare_as_jsonb)),
                    _body(_send_function(settings, names)),
                )
                if tuple(str(f[1]) for f in present) != expected:
                    problems.append("the installed functions differ from this release's")
    return TriggerStatus(
        table=str(names.table),
        installed=installed,
        version=version,
        channel=channel,
        key_columns=keys,
        watched_columns=watched,
        triggers=found,
        functions=tuple(str(f[0]) for f in present),
        current=installed and not problems,
        problems=tuple(problems),
    )
