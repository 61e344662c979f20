"""The always-on daemon behind ``propagator run``, as small parts with one job each.

``supervisor`` builds and runs everything; a ``pipeline`` carries one mapping
from its capture source through the debounce buffer to the writers;
``leadership`` elects the one writer among replicas; ``requests`` decides which
full reconcile runs next; ``jobs`` applies batches and reconciles; ``housekeeping``
schedules reconciles, prunes history and ticks; ``retry`` backs off.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence

from propagator.daemon.status import Role
from propagator.daemon.supervisor import CRASHED, Daemon
from propagator.settings import Settings
from propagator.settings.webhooks import WebhookSettings

__all__ = ["CRASHED", "Daemon", "Role", "run_daemon", "tune_garbage_collection"]

# Young collections once per 20,000 new container objects instead of 700, and
# each older generation after 20 of the one below instead of 10: see below.
_GC_THRESHOLDS = (20_000, 20, 20)


def tune_garbage_collection() -> None:
    """Let the collector run less often in a process that is this daemon.

    Converging thousands of keys a second allocates objects that reference
    counting frees (a test checks a converged batch leaves no cyclic garbage);
    with the default thresholds the collector still ran a full pass every
    ~0.4 s under unthrottled pgbench, each pausing every thread. Event-path
    benchmark, same machine, two invocations of three runs each: probe lag p99
    506 and 492 ms (no run above 671) with these thresholds, 493 and 745 ms
    (runs up to 811) with the defaults. Process-wide, so only ``run_daemon``
    (its own process) and the benchmark running the daemon call it.
    """
    gc.set_threshold(*_GC_THRESHOLDS)


def run_daemon(
    settings: Settings,
    mappings: Sequence[Settings] | None = None,
    webhooks: Sequence[WebhookSettings] = (),
) -> int:
    """Run the daemon (for ``mappings``, else the one mapping ``settings``) until it stops."""
    tune_garbage_collection()
    return asyncio.run(Daemon(settings, mappings=mappings, webhooks=webhooks).run())
