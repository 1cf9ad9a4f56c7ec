"""``python -m client``: the charlm command line."""

import sys

from client.cli import main

sys.exit(main())
