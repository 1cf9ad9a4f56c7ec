"""`python -m training` == `charlm-train`."""

import sys

from training.cli import main

sys.exit(main())
