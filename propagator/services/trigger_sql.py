"""The production change triggers as SQL: rendered from ``sql/triggers/*.sql``, never run here.

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

import json
from collections.abc import Collection
from typing import Any

from psycopg import sql

from propagator.core.identifiers import QualifiedName
from propagator.errors import ConfigurationError
from propagator.services.trigger_names import (
    TriggerNames,
    identifier,
    names_for,
    settings_names,
)
from propagator.services.trigger_spec import TriggerSpec, Watched, trigger_spec
from propagator.sql import load_sql
from propagator.version import __version__

__all__ = [
    "KEY_BYTES_PER_PAYLOAD",
    "MANAGED_MARKER",
    "QUEUE_USAGE_LIMIT",
    "RESYNC_PAYLOADS",
    "TRIGGER_VERSION",
    "before_update_triggers",
    "function_bodies",
    "install_statements",
    "render_install_sql",
    "render_uninstall_sql",
    "uninstall_statements",
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
"""How the description of everything installed begins; ``status`` finds its objects by it."""

_BODY_QUOTE = "propagator_notify"


def _template(name: str) -> str:
    return str(load_sql(f"triggers/{name}"))


def _text(composable: sql.Composable) -> str:
    return composable.as_string(None)


def _comment_text(value: Any) -> sql.SQL:
    """A value shown inside a ``--`` comment: JSON with every control character escaped."""
    return sql.SQL(json.dumps(value, ensure_ascii=True))


def _description(spec: TriggerSpec) -> str:
    return json.dumps(
        {
            "managed_by": "propagator",
            "version": TRIGGER_VERSION,
            "release": __version__,
            "channel": spec.channel,
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


def _watched_changed(spec: TriggerSpec, compare_as_jsonb: Collection[str]) -> sql.Composable:
    """A watched column really differs (NULL-safe): the WHEN of the every-UPDATE form."""
    tests = _comparisons(spec.watched_columns, compare_as_jsonb, "IS DISTINCT FROM")
    return sql.SQL(" OR ").join(tests)


def _key_changed(spec: TriggerSpec, compare_as_jsonb: Collection[str]) -> sql.Composable:
    tests = _comparisons(spec.key_columns, compare_as_jsonb, "IS DISTINCT FROM")
    return sql.SQL(" OR ").join(tests)


def _values_unchanged(spec: TriggerSpec, compare_as_jsonb: Collection[str]) -> sql.Composable:
    """No watched column other than the key differs; ``true`` when only keys are watched."""
    tests = _comparisons(spec.value_columns, compare_as_jsonb, "IS NOT DISTINCT FROM")
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


def _collect_function(
    spec: TriggerSpec, names: TriggerNames, compare_as_jsonb: Collection[str]
) -> tuple[str, str]:
    keys = spec.key_columns
    buffer_setting, chunks_setting = settings_names(names)
    return _dollar_quoted(
        sql.SQL(_template("collect_function.sql")),
        function=identifier(names.collect_function),
        buffer_setting=sql.Literal(buffer_setting),
        chunks_setting=sql.Literal(chunks_setting),
        new_key=_key_text("NEW", keys, compare_as_jsonb),
        old_key=_key_text("OLD", keys, compare_as_jsonb),
        key_changed=_key_changed(spec, compare_as_jsonb),
        values_unchanged=_values_unchanged(spec, compare_as_jsonb),
        key_bytes_per_payload=sql.Literal(KEY_BYTES_PER_PAYLOAD),
        resync_payloads=sql.Literal(RESYNC_PAYLOADS),
    )


def _send_function(spec: TriggerSpec, names: TriggerNames) -> tuple[str, str]:
    buffer_setting, chunks_setting = settings_names(names)
    return _dollar_quoted(
        sql.SQL(_template("send_function.sql")),
        function=identifier(names.send_function),
        buffer_setting=sql.Literal(buffer_setting),
        chunks_setting=sql.Literal(chunks_setting),
        channel=sql.Literal(spec.channel),
        queue_usage_limit=sql.Literal(QUEUE_USAGE_LIMIT),
    )


def _body(definition: tuple[str, str]) -> str:
    text, quote = definition
    return text.split(quote, 2)[1]


def function_bodies(
    target: Watched | TriggerSpec, compare_as_jsonb: Collection[str]
) -> tuple[str, str]:
    """The collect and send function bodies this release installs, as ``prosrc`` shows them."""
    spec = trigger_spec(target)
    names = names_for(spec.table)
    return (
        _body(_collect_function(spec, names, compare_as_jsonb)),
        _body(_send_function(spec, names)),
    )


def _cleanup() -> sql.SQL:
    return sql.SQL(_template("cleanup.sql").rstrip())


def before_update_triggers(table: sql.Composable) -> sql.Composed:
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
    spec: TriggerSpec, names: TriggerNames, compare_as_jsonb: Collection[str]
) -> str:
    """The block creating the UPDATE triggers in the form the table allows, decided at install."""
    table = identifier(names.table)
    watched = sql.SQL(", ").join(sql.Identifier(c) for c in spec.watched_columns)
    collect, send = identifier(names.collect_function), identifier(names.send_function)
    row, statement = sql.Identifier(names.update_trigger), sql.Identifier(names.send_update_trigger)

    def statement_literal(template: str, *values: sql.Composable) -> sql.Literal:
        return sql.Literal(_text(sql.SQL(template).format(*values)))

    return _dollar_quoted(
        sql.SQL(_template("update_triggers.sql")),
        before_update_triggers=before_update_triggers(sql.Literal(_text(table))),
        update_every=statement_literal(
            "CREATE TRIGGER {} AFTER UPDATE ON {} FOR EACH ROW WHEN ({}) EXECUTE FUNCTION {}()",
            row,
            table,
            _watched_changed(spec, compare_as_jsonb),
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


def _comparable_check(spec: TriggerSpec, compare_as_jsonb: Collection[str]) -> str:
    """The block refusing to install when a column compared with ``=`` has no such operator."""
    compared = [c for c in spec.watched_columns if c not in compare_as_jsonb]
    table = identifier(spec.table)
    return _dollar_quoted(
        sql.SQL(_template("comparable_check.sql")),
        table_text=sql.Literal(_text(table)),
        compared_columns=sql.SQL("ARRAY[{}]::text[]").format(
            sql.SQL(", ").join(sql.Literal(c) for c in compared)
        ),
    )[0].rstrip()


def _signature(name: QualifiedName) -> sql.Literal:
    return sql.Literal(_text(identifier(name)) + "()")


def install_statements(
    target: Watched | TriggerSpec, compare_as_jsonb: Collection[str] = ()
) -> str:
    """The install statements without ``BEGIN``/``COMMIT``: ``install`` runs them in its own."""
    spec = trigger_spec(target)
    if spec.filters:
        raise ConfigurationError(
            f"the production filter of {spec.table} reads columns the triggers must watch: "
            "they are found in the production catalog (install, status, or sql with a "
            "production URL)"
        )
    names = names_for(spec.table)
    table = identifier(names.table)
    return _text(
        sql.SQL(_template("install.sql")).format(
            version=sql.SQL(str(TRIGGER_VERSION)),
            table_label=_comment_text(str(names.table)),
            channel_label=_comment_text(spec.channel),
            keys_label=_comment_text(list(spec.key_columns)),
            watched_label=_comment_text(list(spec.watched_columns)),
            buffer_label=sql.SQL(settings_names(names)[0]),
            chunks_label=sql.SQL(settings_names(names)[1]),
            key_bytes_per_payload=sql.SQL(str(KEY_BYTES_PER_PAYLOAD)),
            resync_payloads=sql.SQL(str(RESYNC_PAYLOADS)),
            collect_function=sql.SQL(_collect_function(spec, names, compare_as_jsonb)[0]),
            send_function=sql.SQL(_send_function(spec, names)[0]),
            table_text=sql.Literal(_text(table)),
            collect_text=_signature(names.collect_function),
            send_text=_signature(names.send_function),
            cleanup=_cleanup(),
            insert_trigger=sql.Identifier(names.insert_trigger),
            delete_trigger=sql.Identifier(names.delete_trigger),
            send_trigger=sql.Identifier(names.send_trigger),
            table=table,
            update_triggers=sql.SQL(_update_triggers(spec, names, compare_as_jsonb)),
            comparable_check=sql.SQL(_comparable_check(spec, compare_as_jsonb)),
            collect=identifier(names.collect_function),
            send=identifier(names.send_function),
            description=sql.Literal(_description(spec)),
        )
    )


def uninstall_statements(target: Watched | TriggerSpec) -> str:
    """The removal statements without ``BEGIN``/``COMMIT``: ``uninstall`` runs them in its own."""
    names = names_for(trigger_spec(target).table)
    table = identifier(names.table)
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
            collect=identifier(names.collect_function),
            send=identifier(names.send_function),
        )
    )


def _as_script(statements: str) -> str:
    """One transaction, as a DBA would run it with ``psql -f``."""
    return f"BEGIN;\n\n{statements.rstrip()}\n\nCOMMIT;\n"


def render_install_sql(
    target: Watched | TriggerSpec, *, compare_as_jsonb: Collection[str] = ()
) -> str:
    """The install script for a table, its watched columns and channel (not executed).

    ``compare_as_jsonb`` names watched columns whose type has no equality
    operator; ``install`` finds them in the catalog.
    """
    return _as_script(install_statements(target, compare_as_jsonb))


def render_uninstall_sql(target: Watched | TriggerSpec) -> str:
    """The script removing everything ``install`` created (not executed)."""
    return _as_script(uninstall_statements(target))
