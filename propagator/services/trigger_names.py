"""Names of everything the triggers install for one table, derived from the table's name.

Install, uninstall and status must agree on these names exactly, and PostgreSQL
cuts names longer than 63 bytes without a word; deriving them in one place keeps
two tables' objects from ever colliding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from psycopg import sql

from propagator.core.identifiers import QualifiedName
from propagator.services.trigger_spec import TriggerSpec, Watched, trigger_spec

__all__ = [
    "TriggerNames",
    "identifier",
    "names_for",
    "settings_names",
    "trigger_names",
]

_MAX_NAME_BYTES = 63


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


def trigger_names(target: Watched | TriggerSpec) -> TriggerNames:
    """The names for a production table, or for the one table a mapping's settings read."""
    return names_for(trigger_spec(target).table)


def names_for(table: QualifiedName) -> TriggerNames:
    """The names for one production table: every mapping of the table shares them."""
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


def identifier(name: QualifiedName) -> sql.Identifier:
    """A schema-qualified name as a quoted SQL identifier."""
    return sql.Identifier(*name.parts())


def settings_names(names: TriggerNames) -> tuple[str, str]:
    """The transaction-local settings holding a statement's keys, named after the table."""
    quoted = identifier(names.table).as_string(None)
    digest = hashlib.sha256(quoted.encode("utf-8")).hexdigest()[:16]
    return f"propagator.buffer_{digest}", f"propagator.chunks_{digest}"
