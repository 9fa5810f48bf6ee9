"""KT Studio's core library: transfer learning with PyTorch, importable without any UI."""

from __future__ import annotations

import logging

from .errors import KTError  # noqa: F401

__version__ = "0.1.0"

# Library code logs; applications (the CLI, the worker, the app) decide where logs go.
logging.getLogger(__name__).addHandler(logging.NullHandler())
