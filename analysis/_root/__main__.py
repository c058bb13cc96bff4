"""`python -m flagscope`: the same command as `flagscope`."""

import sys

from flagscope.analysis.cli import main

sys.exit(main())
