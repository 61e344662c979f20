"""What is installed on the production table, and how it drifts from what this release installs.

``propagator triggers status`` and the daemon's start-up check read this back:
the installed objects carry a JSON description (version, channel, columns), and
the function bodies are compared with what ``install`` would create today, so a
hand-edited or stale trigger is reported rather than trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from propagator.adapters.postgres import translate_error
from propagator.errors import PropagatorError, SchemaError
from propagator.services.trigger_columns import (
    Connection,
    incomparable_columns,
    with_filter_columns,
)
from propagator.services.trigger_names import TriggerNames, identifier, names_for
from propagator.services.trigger_spec import TriggerSpec, Watched, trigger_spec
from propagator.services.trigger_sql import (
    MANAGED_MARKER,
    TRIGGER_VERSION,
    before_update_triggers,
    function_bodies,
)
from propagator.sql import load_sql

__all__ = ["TriggerStatus", "status"]

_TABLE_OID = "SELECT to_regclass(%s)::oid"

_Row = tuple[Any, ...]


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


@dataclass(frozen=True, slots=True)
class _Catalog:
    """The catalog rows about the table, read in one transaction.

    ``triggers`` rows (``status_installed_triggers.sql``): name, enabled flag,
    function signature, source, description, whether it names columns.
    ``functions`` rows (``status_function.sql``), one per expected function, None
    when missing: signature, source, description.
    """

    triggers: list[_Row]
    before_update: list[_Row]
    functions: list[_Row | None]

    @property
    def present(self) -> list[_Row]:
        return [f for f in self.functions if f is not None]

    @property
    def installed(self) -> bool:
        return bool(self.triggers) or bool(self.present)

    @property
    def description_text(self) -> str | None:
        """The description comment, preferably from a function, else from a trigger's."""
        present = self.present
        return present[0][2] if present else self.triggers[0][4] if self.triggers else None


@dataclass(frozen=True, slots=True)
class _Description:
    """The JSON description the installed objects carry; anything unreadable is None."""

    version: int | None
    channel: str | None
    key_columns: tuple[str, ...]
    watched_columns: tuple[str, ...]

    @classmethod
    def parse(cls, text: str | None) -> _Description:
        try:
            value = json.loads(text or "")
        except ValueError:
            value = {}
        described: dict[str, Any] = value if isinstance(value, dict) else {}
        version = described.get("version")
        channel = described.get("channel")
        return cls(
            version=version if isinstance(version, int) and not isinstance(version, bool) else None,
            channel=channel if isinstance(channel, str) else None,
            key_columns=tuple(str(c) for c in described.get("key_columns", ()) or ()),
            watched_columns=tuple(str(c) for c in described.get("watched_columns", ()) or ()),
        )


def _read_catalog(conn: Connection, names: TriggerNames) -> _Catalog:
    """Everything status needs from the catalog, in one consistent snapshot."""
    table_text = identifier(names.table).as_string(None)
    try:
        with conn.transaction():
            row = conn.execute(_TABLE_OID, (table_text,)).fetchone()
            if row is None or row[0] is None:
                raise SchemaError(f"the production table {names.table} does not exist")
            triggers = conn.execute(
                load_sql("triggers/status_installed_triggers.sql"), (row[0], MANAGED_MARKER)
            ).fetchall()
            before_update = conn.execute(before_update_triggers(sql.Literal(table_text))).fetchall()
            functions = [
                conn.execute(
                    load_sql("triggers/status_function.sql"),
                    (identifier(name).as_string(None) + "()",),
                ).fetchone()
                for name in names.functions
            ]
    except PropagatorError:
        raise
    except psycopg.Error as error:
        raise translate_error(error, "production", "reading the installed triggers") from None
    return _Catalog(triggers=triggers, before_update=before_update, functions=functions)


def _description_drift(spec: TriggerSpec, described: _Description) -> Iterator[str]:
    """Version, channel and columns recorded at install against this release and configuration."""
    if described.version != TRIGGER_VERSION:
        yield f"installed version {described.version}, this release installs {TRIGGER_VERSION}"
    if described.channel != spec.channel:
        yield f"notifies channel {described.channel!r}, configured {spec.channel!r}"
    if described.key_columns != spec.key_columns:
        yield f"key columns {list(described.key_columns)}, configured {list(spec.key_columns)}"
    if described.watched_columns != spec.watched_columns:
        yield (
            f"watches columns {list(described.watched_columns)}, "
            f"configured {list(spec.watched_columns)}"
        )


def _trigger_drift(names: TriggerNames, catalog: _Catalog) -> Iterator[str]:
    """Missing, obsolete and disabled triggers; an ``UPDATE OF`` form that could miss changes."""
    found = [str(t[0]) for t in catalog.triggers]
    missing = [name for name in names.triggers if name not in found]
    if missing:
        yield f"missing triggers: {', '.join(missing)}"
    obsolete = [name for name in found if name not in names.triggers]
    if obsolete:
        yield f"obsolete triggers: {', '.join(obsolete)}"
    disabled = [str(t[0]) for t in catalog.triggers if t[1] == "D"]
    if disabled:
        yield f"disabled triggers: {', '.join(disabled)}"
    named_only = [str(t[0]) for t in catalog.triggers if t[5] and str(t[0]) in names.triggers]
    if catalog.before_update and named_only:
        yield (
            f"{', '.join(named_only)} fire only for UPDATEs naming a watched column, but "
            f"BEFORE UPDATE trigger {', '.join(str(b[0]) for b in catalog.before_update)} "
            "may change one unnamed; install again to watch every UPDATE"
        )


def _function_drift(conn: Connection, spec: TriggerSpec, catalog: _Catalog) -> list[str]:
    """The installed function bodies against the ones this release would install."""
    try:
        compare_as_jsonb = incomparable_columns(conn, spec)
    except PropagatorError as error:
        return [str(error)]
    if tuple(str(f[1]) for f in catalog.present) != function_bodies(spec, compare_as_jsonb):
        return ["the installed functions differ from this release's"]
    return []


def _problems(
    conn: Connection,
    spec: TriggerSpec,
    names: TriggerNames,
    catalog: _Catalog,
    described: _Description,
) -> list[str]:
    """Every way the installed triggers differ; the function bodies only when nothing else does."""
    if not catalog.installed:
        return ["not installed"]
    problems = [
        f"function {name} is missing"
        for name, function in zip(names.functions, catalog.functions, strict=True)
        if function is None
    ]
    problems.extend(_description_drift(spec, described))
    problems.extend(_trigger_drift(names, catalog))
    if not problems:
        problems.extend(_function_drift(conn, spec, catalog))
    return problems


def status(conn: Connection, target: Watched | TriggerSpec) -> TriggerStatus:
    """Read back what is installed and compare it with what this release would install."""
    spec = with_filter_columns(conn, trigger_spec(target))
    names = names_for(spec.table)
    catalog = _read_catalog(conn, names)
    described = _Description.parse(catalog.description_text)
    problems = _problems(conn, spec, names, catalog, described)
    return TriggerStatus(
        table=str(names.table),
        installed=catalog.installed,
        version=described.version,
        channel=described.channel,
        key_columns=described.key_columns,
        watched_columns=described.watched_columns,
        triggers=tuple(str(t[0]) for t in catalog.triggers),
        functions=tuple(str(f[0]) for f in catalog.present),
        current=catalog.installed and not problems,
        problems=tuple(problems),
    )
