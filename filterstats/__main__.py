"""``python -m filterstats``: the command line."""

import sys

from filterstats.cli import main

sys.exit(main())
