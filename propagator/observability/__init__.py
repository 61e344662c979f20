"""Observability: Prometheus metrics, the HTTP endpoints and structured logging.

Nothing here talks to a database; the daemon feeds these with facts.
"""

from propagator.observability.http import HttpServer, Request, Response
from propagator.observability.logging import configure_logging, get_logger
from propagator.observability.metrics import Metrics

__all__ = ["HttpServer", "Metrics", "Request", "Response", "configure_logging", "get_logger"]
