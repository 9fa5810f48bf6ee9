"""`python -m kt_core ...`: the command line, at parity with the UI."""

from . import compute

compute.apply()  # before anything imports torch: OpenMP reads it once, when torch loads it

from .cli import main  # noqa: E402

raise SystemExit(main())
