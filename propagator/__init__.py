"""propagator: keep chosen columns of a production PostgreSQL table mirrored into a sandbox."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("propagator")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
