"""``python -m mlpot`` runs the command line."""

import sys

from mlpot.cli import main

sys.exit(main())
