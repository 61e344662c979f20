"""propagator: keep chosen columns of a production PostgreSQL table mirrored into a sandbox."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from propagator.services.database_mapping import (
        DatabaseMappingService,
        FieldMapping,
        JobMappingResult,
        MappingStatistics,
        map_production_fab_order_to_sandbox,
    )

from propagator.version import __version__

__all__ = [
    "DatabaseMappingService",
    "FieldMapping",
    "JobMappingResult",
    "MappingStatistics",
    "__version__",
    "map_production_fab_order_to_sandbox",
]

# The seed's programmatic API, imported on first use so `import propagator` (and the
# CLI's start-up) does not pay for SQLAlchemy.
_LAZY_EXPORTS = {
    "DatabaseMappingService": "propagator.services.database_mapping",
    "FieldMapping": "propagator.core.mapping",
    "JobMappingResult": "propagator.core.plan",
    "MappingStatistics": "propagator.core.plan",
    "map_production_fab_order_to_sandbox": "propagator.services.database_mapping",
}


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'propagator' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
