"""How fast this machine is at the moment, printed with each table.

The build machine is a virtual machine whose CPU and disk speed change from hour to hour (a
factor of three has been seen within a day), so a figure means little without the speed it
was measured at; ratios measured in one run are the steadier figures.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

LOOP = 10_000_000


def _loop_seconds() -> float:
    """The best of three runs of a pure-Python loop of `LOOP` additions."""
    best = float("inf")
    for _ in range(3):
        began, total = time.perf_counter(), 0
        for i in range(LOOP):
            total += i
        best = min(best, time.perf_counter() - began)
    return best


def _fsync_microseconds(count: int = 200) -> float:
    """The median time to write 100 bytes and fsync them, in the temporary directory (where
    the benchmarks' SQLite files go)."""
    with tempfile.TemporaryDirectory(prefix="plait-machine-") as tmp:
        fd = os.open(os.path.join(tmp, "probe"), os.O_WRONLY | os.O_CREAT)
        try:
            times = []
            for _ in range(count):
                began = time.perf_counter()
                os.write(fd, b"x" * 100)
                os.fsync(fd)
                times.append(time.perf_counter() - began)
        finally:
            os.close(fd)
    return statistics.median(times) * 1e6


def speed() -> str:
    """One line: the CPU and disk speed now."""
    return (
        f"a pure-Python loop of {LOOP:,} additions {_loop_seconds():.2f} s (best of 3);"
        f" write + fsync of 100 bytes {_fsync_microseconds():.0f} µs (median of 200)"
    )
