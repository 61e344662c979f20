"""The one place the version is written; pyproject.toml reads it from here.

A literal, because asking importlib.metadata costs every command ~20 ms at start.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
