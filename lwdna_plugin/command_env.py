"""What the `lwdna` command sets before torch loads, imported first by the package.

OpenMP reads `OMP_WAIT_POLICY` once, when torch loads it; left unset, its threads spin between
parallel regions and take cores from other work (issue 34 timed the README's demo at 27.5 s
unset and 15.2 s with PASSIVE on a busy 2-core machine; on an idle one the two were level,
20.3-23.9 s against 21.4-22.7 s). The `lwdna` command sets it to PASSIVE unless the user set
it; a program that imports the package as a library keeps its environment untouched.
"""

from __future__ import annotations

import os
import sys


def is_command(argv0: str) -> bool:
    """Whether this process is the `lwdna` console command."""
    return os.path.basename(argv0).removesuffix(".exe") == "lwdna"


if is_command(sys.argv[0] if sys.argv else ""):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
