"""Logical capture on production: install, uninstall, inspect, and the SQL for a DBA.

``capture = "logical"`` reads production changes from a pgoutput replication
slot instead of triggers. Installing it on a production database means one
publication over the selected mappings' tables and one slot; both are checked
first (``preflight``), each refusal one line naming the setting or the grant
that fixes it. The command line calls these with an autocommit connection: the
publication changes in one transaction, the slot is created outside any (the
server waits for the transactions running then to end).

``capture = "notify"`` needs none of this: ``propagator capture`` hands it to
``services.triggers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from propagator.adapters.connections import Connection
from propagator.adapters.publication import (
    PublishedTable,
    apply_publication,
    drop_publication,
    read_publication,
    read_server_facts,
)
from propagator.adapters.slots import create_slot, drop_slot, read_slot_state
from propagator.errors import PermanentError, SettingsMismatchError
from propagator.services.capture_plan import (
    MIN_SERVER_VERSION,
    LogicalPlan,
    LogicalTarget,
    logical_targets,
    publication_drift,
    read_plan,
    server_problems,
    slot_conflict,
    slot_problems,
)
from propagator.services.capture_script import install_script

__all__ = [
    "CaptureStatus",
    "InstallOutcome",
    "LogicalPlan",
    "LogicalTarget",
    "UninstallOutcome",
    "apply_install",
    "install",
    "install_script",
    "logical_targets",
    "plan_install",
    "preflight",
    "status",
    "uninstall",
]


_UNBOUNDED = (
    "production max_slot_wal_keep_size is -1 (unbounded): a slot nobody reads would "
    "retain WAL until the disk fills; set max_slot_wal_keep_size (ALTER SYSTEM SET "
    "max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf()) or pass "
    "--allow-unbounded-slot"
)


def _check_publication_rights(plan: LogicalPlan) -> None:
    """Changing the publication needs CREATE on the database, or its and the tables' owner."""
    drift = publication_drift(plan)
    if not drift:
        return
    publication, facts = plan.publication, plan.facts
    if publication is not None and publication.all_tables:
        raise SettingsMismatchError(drift[0])
    if publication is None and not facts.can_create:
        raise PermanentError(
            f"role {facts.role} lacks CREATE on database {facts.database}, which CREATE "
            f"PUBLICATION needs: GRANT CREATE ON DATABASE {facts.database} TO {facts.role}"
        )
    if publication is not None and not publication.owned:
        raise PermanentError(
            f"publication {publication.name} is owned by {publication.owner}; only its owner "
            f"may change it: GRANT {publication.owner} TO {facts.role}, or have "
            f"{publication.owner} apply `propagator capture sql`"
        )
    for table in plan.tables:
        if table.identity is not None and not table.identity.owned:
            raise PermanentError(
                f"role {facts.role} does not own production table {table.identity.table}; "
                "adding a table to a publication needs its owner (or a superuser): have the "
                "owner apply `propagator capture sql`"
            )


def _check_slot(plan: LogicalPlan) -> None:
    slot, facts = plan.slot, plan.facts
    if slot is None:
        if facts.used_slots >= facts.max_replication_slots:
            raise SettingsMismatchError(
                f"no free replication slot on production: {facts.used_slots} of "
                f"max_replication_slots = {facts.max_replication_slots} are in use; raise "
                "max_replication_slots (then restart the server) or drop a slot nobody reads"
            )
        return
    conflict = slot_conflict(slot, facts.database)
    if conflict:
        raise SettingsMismatchError(conflict)
    if slot.lost and slot.active:
        raise PermanentError(
            f"replication slot {slot.name} lost WAL it needed and must be recreated, but it "
            f"is active (pid {slot.active_pid}): stop the daemon reading it, then install again"
        )


def preflight(plan: LogicalPlan, *, allow_unbounded: bool = False) -> None:
    """Raise the first reason install must not run: one line naming the setting or grant."""
    for problem in server_problems(plan.facts):
        raise SettingsMismatchError(problem)
    if plan.facts.unbounded and not allow_unbounded:
        raise SettingsMismatchError(_UNBOUNDED)
    for problem in plan.table_problems:
        raise SettingsMismatchError(problem)
    _check_publication_rights(plan)
    _check_slot(plan)


def plan_install(
    conn: Connection, target: LogicalTarget, *, allow_unbounded: bool = False
) -> LogicalPlan:
    """Read and check everything; install nothing yet (several databases: all checked first)."""
    plan = read_plan(conn, target)
    preflight(plan, allow_unbounded=allow_unbounded)
    return plan


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    """What install did: to the publication, to the slot."""

    publication: Literal["created", "updated", "current"]
    tables: tuple[PublishedTable, ...]
    slot: Literal["created", "recreated", "present"]
    slot_lsn: str | None


def apply_install(conn: Connection, plan: LogicalPlan) -> InstallOutcome:
    """Bring the publication to the plan in one transaction, then create the slot if needed.

    The publication comes first: a slot decodes each change with the publication as
    it was when the change was made, so it must exist before the slot's first change.
    The slot is read again first: another database on this server may have taken its
    name since the plan (slot names are server-wide), and then nothing is changed here.
    """
    target = plan.target
    slot = read_slot_state(conn, target.slot)
    conflict = None if slot is None else slot_conflict(slot, plan.facts.database)
    if conflict:
        raise SettingsMismatchError(conflict)
    action: Literal["created", "updated", "current"] = "current"
    if publication_drift(plan):
        apply_publication(conn, plan.statements(), target.publication)
        action = "created" if plan.publication is None else "updated"
    if slot is not None and not slot.lost:
        return InstallOutcome(action, plan.wanted, "present", slot.confirmed_flush_lsn)
    if slot is not None:
        drop_slot(conn, target.slot)
    lsn = create_slot(conn, target.slot)
    return InstallOutcome(action, plan.wanted, "created" if slot is None else "recreated", lsn)


def install(
    conn: Connection, target: LogicalTarget, *, allow_unbounded: bool = False
) -> InstallOutcome:
    """Check, then install or bring up to date; running it again changes nothing."""
    return apply_install(conn, plan_install(conn, target, allow_unbounded=allow_unbounded))


@dataclass(frozen=True, slots=True)
class UninstallOutcome:
    """What uninstall removed, and a slot of that name it left alone (not propagator's)."""

    slot_dropped: bool
    publication_dropped: bool
    slot_left: str | None = None


def uninstall(conn: Connection, target: LogicalTarget) -> UninstallOutcome:
    """Drop the slot (refused while a session reads it), then the publication; idempotent."""
    facts = read_server_facts(conn)
    if facts.server_version_num < MIN_SERVER_VERSION:
        raise SettingsMismatchError(
            f"production server is PostgreSQL {facts.version}; it has no logical capture"
        )
    slot = read_slot_state(conn, target.slot)
    left = None
    if slot is not None and slot_conflict(slot, facts.database):
        left = (
            f"replication slot {slot.name} ({slot.slot_type}, plugin {slot.plugin}, database "
            f"{slot.database}) is not this database's pgoutput slot: left in place"
        )
    elif slot is not None and slot.active:
        raise PermanentError(
            f"replication slot {slot.name} is active (pid {slot.active_pid}): stop the daemon "
            "reading it, then uninstall again"
        )
    elif slot is not None:
        drop_slot(conn, slot.name)
    publication = read_publication(conn, target.publication, column_lists=facts.column_lists)
    if publication is not None:
        drop_publication(conn, target.publication)
    return UninstallOutcome(
        slot_dropped=slot is not None and left is None,
        publication_dropped=publication is not None,
        slot_left=left,
    )


_SLOT_FIELDS = (
    "plugin",
    "slot_type",
    "database",
    "active",
    "active_pid",
    "wal_status",
    "restart_lsn",
    "confirmed_flush_lsn",
    "retained_bytes",
)


def _columns(columns: tuple[str, ...] | None) -> list[str] | None:
    return None if columns is None else list(columns)


@dataclass(frozen=True, slots=True)
class CaptureStatus:
    """One production database's logical capture: what is there, and every problem."""

    plan: LogicalPlan
    problems: tuple[str, ...]

    @property
    def current(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        plan, slot = self.plan, self.plan.slot
        publication = plan.publication
        return {
            "capture": "logical",
            "database": plan.facts.database,
            "mappings": list(plan.target.names),
            "current": self.current,
            "server": plan.facts.as_dict(),
            "publication": {
                "name": plan.target.publication,
                "exists": publication is not None,
                "events": list(publication.events) if publication else [],
                "tables": [
                    {"table": str(t.table), "columns": _columns(t.columns)}
                    for t in (publication.tables if publication else ())
                ],
                "wanted": [
                    {"table": str(t.table), "columns": _columns(t.columns)} for t in plan.wanted
                ],
            },
            "slot": {
                "name": plan.target.slot,
                "exists": slot is not None,
                **{field: getattr(slot, field, None) for field in _SLOT_FIELDS},
            },
            "problems": list(self.problems),
        }


def status(conn: Connection, target: LogicalTarget) -> CaptureStatus:
    """Read everything back and list every way it falls short of what install makes."""
    plan = read_plan(conn, target)
    problems = [
        *server_problems(plan.facts),
        *plan.table_problems,
        *publication_drift(plan),
        *slot_problems(plan),
    ]
    return CaptureStatus(plan, tuple(problems))
