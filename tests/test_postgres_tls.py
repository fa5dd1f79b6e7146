"""TLS to PostgreSQL, as managed services demand: `sslmode=require` and `verify-full`.

Debian's PostgreSQL serves its snakeoil certificate, made for `localhost`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import plait

SNAKEOIL = Path("/etc/ssl/certs/ssl-cert-snakeoil.pem")


def server_ssl() -> bool:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show ssl"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done.stdout.strip() == "on"


pytestmark = pytest.mark.skipif(not server_ssl(), reason="the PostgreSQL server has ssl off")


def ssl_sessions(database: str) -> list[str]:
    """Whether each session on `database` (but psql's own) is encrypted: "t" or "f"."""
    done = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-Atc",
            "select s.ssl from pg_stat_ssl s join pg_stat_activity a using (pid) "
            "where a.datname = current_database() and a.pid <> pg_backend_pid()",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.split()


async def test_sslmode_require_encrypts_every_connection(postgres_url: str) -> None:
    async with plait.Engine.postgres(f"{postgres_url}?sslmode=require") as engine:
        assert engine.store is not None
        sessions = ssl_sessions(postgres_url.rsplit("/", 1)[1])
        assert sessions, "the engine holds connections"
        assert set(sessions) == {"t"}


@pytest.mark.skipif(not SNAKEOIL.exists(), reason="no snakeoil certificate")
async def test_verify_full_checks_the_server_name(postgres_url: str) -> None:
    # The server's certificate names `localhost`: reached as 127.0.0.1 it is refused...
    with pytest.raises(plait.StoreConnectError):
        async with plait.Engine.postgres(f"{postgres_url}?sslmode=verify-full"):
            pass
    # ...and reached by its name, with its certificate as the root, it is verified.
    by_name = postgres_url.replace("@127.0.0.1:", "@localhost:")
    async with plait.Engine.postgres(f"{by_name}?sslmode=verify-full&sslrootcert={SNAKEOIL}"):
        assert set(ssl_sessions(postgres_url.rsplit("/", 1)[1])) == {"t"}
