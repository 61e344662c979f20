"""``python -m propagator`` runs the command line."""

import sys

from propagator.cli import entry_point

sys.exit(entry_point())
