"""How CPU threads wait for each other, chosen for machines that other jobs share.

PyTorch's CPU kernels run on OpenMP threads that meet at the end of every parallel region. By
default a thread that arrives first spins (libgomp: hundreds of thousands of turns) before it
sleeps; when another job has taken the core of the thread it waits for, it spins for that job's
whole time slice. On the project's 2-core machine with one other busy process, a tiny training
step ran at 0.26-0.35 of its idle rate that way (0.06 with a long spin), and at 0.55 with a short
spin of 1,000 turns, which costs about 6% on an idle machine (`benchmarks/busy.py`, RESULTS.md).

:func:`prefer_short_spin` sets that short spin (libgomp's ``GOMP_SPINCOUNT``; ``KMP_BLOCKTIME`` for
builds with Intel's OpenMP) unless the user set a wait policy of their own. It must run before
torch is imported: OpenMP reads it once, when it starts. The command line calls it first thing.
"""

from __future__ import annotations

import os

SPIN_COUNT = "1000"
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")


def prefer_short_spin(environ: dict | None = None) -> bool:
    """Set the short spin in ``environ`` (default ``os.environ``); False when the user chose their own."""
    environ = os.environ if environ is None else environ
    if any(k in environ for k in USER_SETTINGS):
        return False
    environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    environ["KMP_BLOCKTIME"] = "1"  # milliseconds
    return True
