"""`python -m service`: the same as `charlm-serve`."""

import sys

from service.cli import main

sys.exit(main())
