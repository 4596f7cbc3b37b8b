"""``python -m streamtrk`` runs the ``streamtrk`` command."""

import sys

from streamtrk.cli import main

sys.exit(main())
