"""`python -m kt_core ...`: the command line, at parity with the UI."""

from .cli import main

raise SystemExit(main())
