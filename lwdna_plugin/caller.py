"""Warnings at the caller's line, not at a line of this package's."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def warn_caller(message: str) -> None:
    """Warn at the caller's line: the first frame outside this package and torch's decorator
    wrappers (`dissimilate` runs inside two), not a line of ours or of torch's."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("lwdna_plugin")
        or Path(frame.f_code.co_filename).parts[-3:] == ("torch", "utils", "_contextlib.py")
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)
