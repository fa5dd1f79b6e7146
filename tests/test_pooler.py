"""A cluster behind a connection pooler: real PgBouncer (session pooling) in front of the real
PostgreSQL, real runner processes (`tests/cluster_worker.py`) connecting through it.

Session pooling keeps what a runner needs a session for (LISTEN, its session advisory lock,
prepared statements); the pooler bounds the server connections, and a runner's own count is
`plait_readers` (in the URL) + 3: the writer, the lock session, the listener.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cluster import Cluster, check_deposits

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
READERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def pooler() -> Iterator[int]:
    """PgBouncer in session mode on a free loopback port, for every database of the server."""
    if not os.path.exists(PGBOUNCER):
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer; ./dev setup does)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("PgBouncer refuses to run as root and runuser is missing")
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="plait-pgbouncer-"))
    home.chmod(0o777)
    (home / "users.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(
        f"""[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home}/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
; sqlx sends these startup parameters, which PgBouncer does not track
ignore_startup_parameters = extra_float_digits,options
logfile = {home}/pgbouncer.log
pidfile = {home}/pgbouncer.pid
"""
    )
    for path in home.iterdir():
        path.chmod(0o666)
    command = [PGBOUNCER, str(home / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (home / "pgbouncer.log").read_text()
                assert time.monotonic() < deadline, "PgBouncer did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def server_connections(database: str) -> int:
    """Connections the PostgreSQL server has to `database` now."""
    counted = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qAtc",
            f"select count(*) from pg_stat_activity where datname = '{database}'",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(counted.stdout.strip())


def test_runners_work_through_pgbouncer_with_a_bounded_connection_count(
    postgres_url: str, pooler: int, tmp_path: Path
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    url = f"postgresql://postgres@127.0.0.1:{pooler}/{database}?plait_readers={READERS}"
    cluster = Cluster(url, tmp_path)
    try:
        requests, accounts = 600, 60
        sender, other = 4631, 4632
        cluster.start(sender, requests, accounts)
        cluster.start(other)
        ports = [sender, other]
        cluster.wait("two runners settle", lambda: cluster.settled(ports))
        (cluster.out / "go").touch()
        peak = 0
        done = cluster.out / f"done-{sender}"

        def finished() -> bool:
            nonlocal peak
            peak = max(peak, server_connections(database))
            return done.exists()

        cluster.wait("the sender is done", finished, timeout=120)
        check_deposits(cluster.replies(sender), requests, accounts)
        # Requests to the other runner's entities crossed through the pooled database, woken
        # by NOTIFY through PgBouncer: both runners ran handlers.
        assert {run.port for run in cluster.runs()} == set(ports)
        print(f"peak server connections through PgBouncer: {peak}")
        assert 0 < peak <= len(ports) * (READERS + 3), f"{peak} server connections"
    finally:
        cluster.close()
