"""Fresh databases for the benchmarks, as engine URLs, and which backends a run can use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from benches.compare_dbos import fresh_database, postgres_missing

BACKENDS = ["sqlite", "postgres"]


@contextmanager
def database(backend: str, admin_url: str) -> Iterator[str]:
    """A fresh database for one measurement, as an engine URL; removed afterwards."""
    with fresh_database("plait", backend, admin_url) as where:  # type: ignore[arg-type]
        yield f"sqlite://{where}" if backend == "sqlite" else where


def usable_backends(asked: list[str] | None, admin_url: str) -> list[str]:
    """The backends asked for (default: both), less PostgreSQL when it cannot be reached."""
    backends = list(asked or BACKENDS)
    if "postgres" in backends and (reason := postgres_missing(admin_url)):
        print(f"skipping PostgreSQL: {reason}")
        backends.remove("postgres")
    return backends
