"""`python -m bnrank.cli`: the `bnrank` command without the installed script (tests, the service launcher)."""

import sys

from bnrank.cli import main

sys.exit(main())
