"""The production change triggers: render, install, uninstall and inspect them.

The SQL lives in ``sql/triggers/*.sql`` so a DBA can read it, or print it with
``propagator triggers sql`` and apply it by hand; every name from configuration
is filled in with ``psycopg.sql`` (identifiers quoted, values as literals), so a
hostile table or column name can never become SQL. What is installed carries a
JSON description (version, channel, columns) that ``status`` reads back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator import __version__
from propagator.adapters.postgres import describe_table, translate_error
from propagator.core.identifiers import QualifiedName
from propagator.errors import PropagatorError, SchemaError, TransientError
from propagator.settings import Settings
from propagator.sql import load_sql

__all__ = [
    "KEY_BYTES_PER_PAYLOAD",
    "MAX_KEY_BYTES",
    "RESYNC_KEY_COUNT",
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

TRIGGER_VERSION = 1
"""Bumped whenever the installed SQL changes meaning; ``status`` compares it."""

RESYNC_KEY_COUNT = 10_000
"""More changed keys than this in one statement: send one resync request instead."""

MAX_KEY_BYTES = 2_000
"""A key whose JSON text is longer than this turns its statement into a resync."""

KEY_BYTES_PER_PAYLOAD = 7_900
"""Room for keys in one payload: with the header (< 60 bytes) it stays under 8000."""

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
    function: QualifiedName
    insert_trigger: str
    update_trigger: str
    delete_trigger: str

    @property
    def triggers(self) -> tuple[str, str, str]:
        return (self.insert_trigger, self.update_trigger, self.delete_trigger)


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
    function: str | None
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
            "function": self.function,
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
        function=QualifiedName(table.schema, _object_name("propagator_notify_", table.name)),
        insert_trigger=_object_name("propagator_", table.name, "_insert"),
        update_trigger=_object_name("propagator_", table.name, "_update"),
        delete_trigger=_object_name("propagator_", table.name, "_delete"),
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


def _json_array(alias: str, columns: tuple[str, ...]) -> sql.Composable:
    parts = sql.SQL(", ").join(
        sql.SQL("{}.{}").format(sql.SQL(alias), sql.Identifier(c)) for c in columns
    )
    return sql.SQL("jsonb_build_array({})").format(parts)


def _column(alias: str, column: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.SQL(alias), sql.Identifier(column))


def _function_definition(settings: Settings, names: TriggerNames) -> tuple[str, str]:
    """The CREATE FUNCTION statement and the dollar quote around its body."""
    spec = settings.mapping_spec
    keys = spec.key_columns
    watched_values = tuple(c for c in spec.watched_columns if c not in keys)
    template = sql.SQL(_template("notify_function.sql"))
    tag = _BODY_QUOTE
    attempt = 0
    while True:
        quote = f"${tag}$"
        rendered = _text(
            template.format(
                function=_identifier(names.function),
                body_quote=sql.SQL(quote),
                new_key=_json_array("n", keys),
                old_key=_json_array("o", keys),
                key_match=sql.SQL(" AND ").join(
                    sql.SQL("{} = {}").format(_column("n", c), _column("o", c)) for c in keys
                ),
                unmatched=sql.SQL("{} IS NULL OR {} IS NULL").format(
                    _column("n", keys[0]), _column("o", keys[0])
                ),
                new_side_missing=sql.SQL(" AND ").join(
                    sql.SQL("{} IS NULL").format(_column("n", c)) for c in keys
                ),
                new_watched=_json_array("n", watched_values),
                old_watched=_json_array("o", watched_values),
                channel=sql.Literal(settings.channel),
                queue_usage_limit=sql.Literal(QUEUE_USAGE_LIMIT),
                resync_key_count=sql.Literal(RESYNC_KEY_COUNT),
                max_key_bytes=sql.Literal(MAX_KEY_BYTES),
                key_bytes_per_payload=sql.Literal(KEY_BYTES_PER_PAYLOAD),
            )
        )
        # A name containing the dollar-quote tag would end the body early: pick another tag.
        if rendered.count(quote) == 2:
            return rendered, quote
        attempt += 1
        tag = f"{_BODY_QUOTE}_{attempt}"


def _cleanup() -> sql.SQL:
    return sql.SQL(_template("cleanup.sql").rstrip())


def _install_statements(settings: Settings) -> str:
    names = trigger_names(settings)
    spec = settings.mapping_spec
    table = _identifier(names.table)
    function = _identifier(names.function)
    return _text(
        sql.SQL(_template("install.sql")).format(
            version=sql.SQL(str(TRIGGER_VERSION)),
            table_label=_comment_text(str(names.table)),
            channel_label=_comment_text(settings.channel),
            keys_label=_comment_text(list(spec.key_columns)),
            watched_label=_comment_text(list(spec.watched_columns)),
            resync_key_count=sql.SQL(str(RESYNC_KEY_COUNT)),
            max_key_bytes=sql.SQL(str(MAX_KEY_BYTES)),
            function_definition=sql.SQL(_function_definition(settings, names)[0]),
            table_text=sql.Literal(_text(table)),
            function_text=sql.Literal(_text(function) + "()"),
            cleanup=_cleanup(),
            insert_trigger=sql.Identifier(names.insert_trigger),
            update_trigger=sql.Identifier(names.update_trigger),
            delete_trigger=sql.Identifier(names.delete_trigger),
            table=table,
            function=function,
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
            table=table,
            table_text=sql.Literal(_text(table)),
            cleanup=_cleanup(),
            function=_identifier(names.function),
        )
    )


def _as_script(statements: str) -> str:
    """One transaction, as a DBA would run it with ``psql -f``."""
    return f"BEGIN;\n\n{statements.rstrip()}\n\nCOMMIT;\n"


def render_install_sql(settings: Settings) -> str:
    """The install script for the configured table, columns and channel (not executed)."""
    return _as_script(_install_statements(settings))


def render_uninstall_sql(settings: Settings) -> str:
    """The script removing everything ``install`` created (not executed)."""
    return _as_script(_uninstall_statements(settings))


def _require_columns(conn: Connection, settings: Settings) -> None:
    """Refuse to install a trigger that would fail (silently, by design) on every statement."""
    table = describe_table(conn, settings.production_table_name, "production")
    for column in settings.mapping_spec.key_columns:
        table.column(column, "key")
    for column in settings.mapping_spec.source_columns:
        table.column(column, "mapped")


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
    _require_columns(conn, settings)
    _run(conn, _install_statements(settings), f"installing triggers on {settings.production_table}")


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
       obj_description(p.oid, 'pg_proc')
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


def _expected_body(settings: Settings, names: TriggerNames) -> str:
    definition, quote = _function_definition(settings, names)
    return definition.split(quote, 2)[1]


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
    function_text = _text(_identifier(names.function)) + "()"
    try:
        with conn.transaction():
            row = conn.execute(_TABLE_OID, (table_text,)).fetchone()
            if row is None or row[0] is None:
                raise SchemaError(f"the production table {names.table} does not exist")
            triggers = conn.execute(_INSTALLED_TRIGGERS, (row[0], MANAGED_MARKER)).fetchall()
            function = conn.execute(_FUNCTION, (function_text,)).fetchone()
    except PropagatorError:
        raise
    except psycopg.Error as error:
        raise translate_error(error, "production", "reading the installed triggers") from None

    problems: list[str] = []
    description = _describe(function[2] if function else None)
    if function is None and triggers:
        description = _describe(triggers[0][4])
    installed = bool(triggers) or function is not None
    version = description.get("version")
    version = version if isinstance(version, int) and not isinstance(version, bool) else None
    channel = description.get("channel") if isinstance(description.get("channel"), str) else None
    keys = tuple(str(c) for c in description.get("key_columns", ()) or ())
    watched = tuple(str(c) for c in description.get("watched_columns", ()) or ())
    found = tuple(str(t[0]) for t in triggers)

    if not installed:
        problems.append("not installed")
    else:
        if function is None:
            problems.append(f"function {function_text} is missing")
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
        if function is not None and not problems and function[1] != _expected_body(settings, names):
            problems.append("the installed function differs from this release's")
    return TriggerStatus(
        table=str(names.table),
        installed=installed,
        version=version,
        channel=channel,
        key_columns=keys,
        watched_columns=watched,
        triggers=found,
        function=str(function[0]) if function else None,
        current=installed and not problems,
        problems=tuple(problems),
    )
