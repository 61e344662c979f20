"""``python -m propagator`` runs the command line."""

import sys

from propagator.cli import main

sys.exit(main())
