from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print each benchmark's mean against the fastest of its group."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:
        return
    groups: dict[str, list[tuple[str, float]]] = defaultdict(list)
    extra: list[str] = []
    for bench in session.benchmarks:
        if bench.stats is not None and bench.stats.rounds:
            groups[bench.group or ""].append((bench.name, bench.stats.mean))
        extra += [f"  {bench.name}: {key} = {value}" for key, value in bench.extra_info.items()]
    terminalreporter.write_sep("-", "ratios within each group (mean / fastest mean)")
    for group, rows in sorted(groups.items()):
        fastest = min(mean for _, mean in rows)
        terminalreporter.write_line(group)
        for name, mean in sorted(rows, key=lambda row: row[1]):
            terminalreporter.write_line(f"  {mean / fastest:8.1f}x  {mean * 1e3:10.3f} ms  {name}")
    for line in extra:
        terminalreporter.write_line(line)
