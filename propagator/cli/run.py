"""``propagator run``: the always-on daemon that keeps the sandbox converged."""

from __future__ import annotations

import argparse

from propagator.errors import (
    ConfigurationError,
    PermanentError,
    SettingsMismatchError,
    TransientError,
)
from propagator.services.sync import SyncSession
from propagator.services.typefit import refuse_impossible
from propagator.settings import Settings, load_configuration

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    configuration = load_configuration(args.config, selection=args.mappings)
    for mapping in configuration.mappings:
        try:
            # A missing URL is a configuration error, before anything starts.
            mapping.production_url()
            mapping.sandbox_url()
            _refuse_settings_that_do_not_fit(mapping)
        except SettingsMismatchError as error:
            if configuration.named:
                raise SettingsMismatchError(f"mapping {mapping.mapping_name}: {error}") from None
            raise
        except ConfigurationError as error:
            if configuration.named:
                raise ConfigurationError(f"mapping {mapping.mapping_name}: {error}") from None
            raise
    # Imported here: every other subcommand would otherwise pay for loading the daemon.
    from propagator.daemon import run_daemon
    from propagator.observability.logging import configure_logging

    configure_logging(configuration.settings)
    return run_daemon(configuration.settings, configuration.mappings, configuration.webhooks)


def _refuse_settings_that_do_not_fit(settings: Settings) -> None:
    """Refuse keys that are not unique, a filter that fails or a mapping no value can cross,
    when both databases answer.

    A database that does not answer yet is no reason to refuse: the daemon starts
    and retries. Any other problem (a missing table) is left to the daemon too,
    which reports it and retries slowly, as it always has.
    """
    with SyncSession(settings, purpose="run") as session:
        try:
            refuse_impossible(session.prepare())
        except SettingsMismatchError:
            raise
        except (TransientError, PermanentError):
            return
