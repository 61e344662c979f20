"""Structured logs: JSON lines for machines, a readable console for people, never a password.

structlog and the standard library (psycopg, tenacity, asyncio) share one handler
and one renderer, so every line has the same shape: ``timestamp`` (ISO 8601,
UTC), ``level``, ``logger``, ``event`` (a snake_case fact such as
``batch_applied``) and the context bound through contextvars. Before rendering,
every key and value of the event, including exception text and tracebacks, is
reduced to plain data and passed through ``core.redact`` before either renderer
sees it, so no configured password can leave the process in a log line.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from propagator.core.redact import redact, redact_data
from propagator.settings import Settings

__all__ = [
    "bind_context",
    "clear_context",
    "configure_logging",
    "get_logger",
    "redact_data",
    "redact_event",
    "unbind_context",
]

_HANDLER_MARK: Final = "_propagator_handler"
_LEADING_FIELDS: Final = ("timestamp", "level", "logger", "event")
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

bind_context = structlog.contextvars.bind_contextvars
unbind_context = structlog.contextvars.unbind_contextvars
clear_context = structlog.contextvars.clear_contextvars


def redact_event(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Reduce the event to plain data with every password masked, leading fields first.

    After this step a renderer only sees strings, numbers, booleans, None and
    containers of them, all redacted: nothing it serialises can carry a secret.
    """
    ordered = {key: event_dict[key] for key in _LEADING_FIELDS if key in event_dict}
    ordered.update(event_dict)
    return {redact(str(key)): redact_data(value) for key, value in ordered.items()}


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _wants_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def _renderer(as_json: bool, stream: TextIO) -> Processor:
    """JSON lines off a terminal; on one, a console renderer (coloured only on a tty)."""
    if as_json:
        return structlog.processors.JSONRenderer(default=str)
    colors = bool(getattr(stream, "isatty", lambda: False)())
    return structlog.dev.ConsoleRenderer(
        colors=colors,
        # Plain text: fancy tracebacks can print local variables, passwords included.
        exception_formatter=structlog.dev.plain_traceback,
    )


def _redacting_handler(
    stream: TextIO, shared: list[Processor], renderer: Processor
) -> logging.Handler:
    """The one handler every line goes through: tracebacks as text, redacted, then rendered."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text here so the redaction below sees them.
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _install_on_root(handler: logging.Handler, level: int) -> None:
    """Replace the handler an earlier call installed, leaving anyone else's in place."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)


def configure_logging(
    settings: Settings | None = None,
    *,
    stream: TextIO | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> None:
    """Route structlog and standard-library logging to one redacting renderer on ``stream``.

    Calling it again replaces the previous configuration (the CLI and tests do).
    """
    stream = stream if stream is not None else sys.stdout
    fmt = log_format or (settings.log_format if settings is not None else "auto")
    level_name = (log_level or (settings.log_level if settings is not None else "info")).lower()
    level = _LEVELS.get(level_name, logging.INFO)
    renderer = _renderer(_wants_json(fmt, stream), stream)

    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: reconfiguring (CLI, tests) must reach loggers already in use.
        cache_logger_on_first_use=False,
    )
    _install_on_root(_redacting_handler(stream, shared, renderer), level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (usually the module's ``__name__``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
