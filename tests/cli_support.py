"""Running the `plait` command as a user does: its real entry point, in child processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def entry_point() -> list[str]:
    """The `plait` console script, as pip installs it from pyproject.toml's `[project.scripts]`.

    The installed script when there is one (`./dev setup` installs it); else the same call,
    which is all a console script does: import the entry point and exit with what it returns.
    """
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"plait": "plait.cli:main"}
    installed = Path(sys.executable).with_name("plait")
    if installed.exists() and "plait.cli" in installed.read_text():
        return [str(installed)]
    return [sys.executable, "-c", "import sys; from plait.cli import main; sys.exit(main())"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAIT_")}
    env["PYTHONPATH"] = f"{ROOT / 'python'}{os.pathsep}{ROOT}"
    env["COLUMNS"] = "200"  # rich wraps at the terminal's width: keep lines whole
    return {**env, **extra}


def plait_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*entry_point(), *args],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Served:
    """A `plait serve` child process and the URL it serves on; its stderr is kept in `log`."""

    def __init__(self, process: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log
        # Read on, so a full pipe never blocks the server.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> int:
        """Stops it as an operator would (SIGTERM); its exit status."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return status


def start_serving(
    database: str, *extra: str, module: str = "tests.http_workflows", **env: str
) -> Served:
    """`plait serve <module>` on a free port; `env` adds to its environment."""
    command = ["serve", module, "--port", "0", "--database", database, *extra]
    process = subprocess.Popen(
        [*entry_point(), *command],
        cwd=ROOT,
        env=child_env(**env),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        found = re.search(r"Uvicorn running on (http://\S+)", line)
        if found:
            return Served(process, found[1], seen)
    process.kill()
    process.wait()
    process.stderr.close()
    msg = f"plait serve did not start: {''.join(seen)}"
    raise AssertionError(msg)


def serve_runner(database: str, runner: str, out: Path, lease_seconds: float) -> Served:
    """`plait serve tests.cluster_worker --runner <runner>`: the proxy of a cluster's runner
    (or, with `client`, of a client-only process) serving `ClusterAccount`.

    Its lease times are `tests/cluster_worker.py`'s, so it settles with those runners; its
    deposits' runs go to the same effects file, marked with its runner port (0: none).
    """
    port = runner.rpartition(":")[2] if runner != "client" else "0"
    return start_serving(
        database,
        "--runner",
        runner,
        module="tests.cluster_worker",
        CLUSTER_EFFECTS=str(out / "effects"),
        CLUSTER_PORT=port,
        PLAIT_SHARD_LOCK_EXPIRATION=str(lease_seconds),
        PLAIT_SHARD_LOCK_REFRESH_INTERVAL=str(lease_seconds / 4),
        PLAIT_REFRESH_ASSIGNMENTS_INTERVAL="0.5",
        PLAIT_ENTITY_TERMINATION_TIMEOUT="2",
        PLAIT_ENTITY_MESSAGE_POLL_INTERVAL="1",
    )
