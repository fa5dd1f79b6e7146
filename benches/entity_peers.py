"""The peers of `benches/entities.py`: Effect's cluster and Restate, installed and run under /tmp.

Their scripts live in `benches/peers/` (an Effect program in TypeScript, a Restate service in
Python); this module copies each into a folder of its own under the peers directory (default
`/tmp/plait-entity-peers`), installs its pinned packages there (npm, and pip into a venv of its
own: never into plait's environment or tree), and runs it. An install is reused while its pins
are unchanged. Whatever cannot be installed or started raises `PeerUnavailable` with the reason,
which the comparison prints in the peer's rows.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "peers"
DEFAULT_DIR = Path(os.environ.get("PLAIT_PEERS_DIR", "/tmp/plait-entity-peers"))
#: Seconds an npm or pip install may take.
INSTALL_TIMEOUT = 900.0


class PeerUnavailable(Exception):
    """A peer could not be installed or started; the message says why."""


def _run(args: list[str], cwd: Path, what: str, timeout: float = INSTALL_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PeerUnavailable(f"{what}: {err}") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise PeerUnavailable(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def _copy(folder: Path, names: list[str], into: Path) -> bool:
    """Copies `names` from benches/peers/`folder` into `into`; whether any of them changed."""
    into.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in names:
        source, target = HERE / folder / name, into / name
        if not target.exists() or not filecmp.cmp(source, target, shallow=False):
            shutil.copyfile(source, target)
            changed = True
    return changed


def _npm_install(folder: Path, into: Path) -> None:
    """Installs the pinned npm packages of `folder` into `into`, unless they already are."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerUnavailable("node and npm are not installed")
    changed = _copy(folder, ["package.json", "package-lock.json"], into)
    stamp = into / "node_modules" / ".plait-installed"
    if changed or not stamp.exists():
        # --ignore-scripts: no package here needs one (esbuild's binary comes as an optional
        # package; restate-server's install script only pings analytics).
        _run(
            ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            into,
            f"npm install in {into}",
        )
        stamp.write_text("installed from the pinned package-lock.json\n")


# Effect ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """Effect's cluster, installed: the folder to run `entities.ts` in, and its versions."""

    folder: Path
    versions: str


def install_effect(base: Path = DEFAULT_DIR) -> Effect:
    """Installs Effect 4 (with @effect/sql-pg and tsx) and the benchmark program under `base`.

    Raises:
        PeerUnavailable: node or npm is missing, or the install failed.
    """
    into = base / "effect"
    _npm_install(Path("effect"), into)
    _copy(Path("effect"), ["entities.ts"], into)

    def version(package: str) -> str:
        try:
            manifest = into / "node_modules" / package / "package.json"
            return str(json.loads(manifest.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "?"

    node = _run(["node", "--version"], into, "node --version", timeout=30).strip()
    return Effect(
        into,
        f"effect {version('effect')}, @effect/sql-pg {version('@effect/sql-pg')}, node {node}",
    )


def run_effect(
    effect: Effect, config: dict[str, Any], timeout: float = 1_800.0, node: str = "node"
) -> list[dict[str, Any]]:
    """Runs `entities.ts` with `config`; the JSON lines it printed, one per measurement.

    Raises:
        PeerUnavailable: node could not run it, or it failed before it finished.
    """
    args = [node, "--expose-gc", "--import", "tsx", "entities.ts", json.dumps(config)]
    out = _run(args, effect.folder, f"Effect ({config['mode']})", timeout=timeout)
    try:
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    except ValueError as err:
        raise PeerUnavailable(f"Effect ({config['mode']}) printed a broken line: {err}") from None
    if not any(line.get("done") for line in lines):
        raise PeerUnavailable(f"Effect ({config['mode']}) stopped early: {out[-500:]}")
    return [line for line in lines if "row" in line]


# Restate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restate:
    """Restate, installed: the server binary, the service's venv, and the versions."""

    folder: Path
    server: Path
    python: Path
    versions: str


def install_restate(base: Path = DEFAULT_DIR) -> Restate:
    """Installs restate-server (npm) and the Python SDK with hypercorn (a venv) under `base`.

    Raises:
        PeerUnavailable: node, npm or venv is missing, or an install failed.
    """
    into = base / "restate"
    _npm_install(Path("restate"), into)
    changed = _copy(Path("restate"), ["requirements.txt", "counter.py"], into)
    venv = into / "venv"
    python = venv / "bin" / "python"
    stamp = venv / ".plait-installed"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], into, "python -m venv")
    if changed or not stamp.exists():
        _run(
            [str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
            into,
            "pip install -r requirements.txt",
        )
        stamp.write_text("installed from requirements.txt\n")
    arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if arch is None:
        raise PeerUnavailable(f"restate-server ships no binary for {platform.machine()}")
    server = into / "node_modules" / "@restatedev" / f"restate-server-linux-{arch}" / "bin"
    server = server / "restate-server"
    if not server.exists():
        raise PeerUnavailable(f"restate-server binary missing at {server}")
    version = _run([str(server), "--version"], into, "restate-server --version", timeout=30)
    sdk = _run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('restate-sdk'))"],
        into,
        "the SDK's version",
        timeout=30,
    )
    return Restate(
        into,
        server,
        python,
        f"{version.strip().splitlines()[0]}, restate-sdk {sdk.strip()} under hypercorn",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http(url: str, body: object = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def _until(check: Any, seconds: float, what: str, log: Path) -> None:
    """Polls `check()` until it answers without raising, or gives up naming `what`."""
    deadline = time.monotonic() + seconds
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            check()
            return
        except (OSError, urllib.error.URLError, ValueError) as err:
            last = err
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
    raise PeerUnavailable(f"timed out waiting for {what} ({last}); log: {tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stops a process this module started, by its handle."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def restate_running(restate: Restate) -> Iterator[str]:
    """A fresh single-node restate-server (its defaults: RocksDB and the local log-server, with
    fsync) on free loopback ports, with the counter service registered; yields the ingress URL.
    Stops both processes it started and removes the server's data afterwards.

    Raises:
        PeerUnavailable: The server or the service did not come up.
    """
    ingress, admin, node, service = (_free_port() for _ in range(4))
    data = restate.folder / f"data-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    config = restate.folder / f"restate-{os.getpid()}.toml"
    config.write_text(
        "\n".join(
            [
                'cluster-name = "plait-entity-bench"',
                'node-name = "bench-node"',
                'bind-ip = "127.0.0.1"',
                'listen-mode = "tcp"',
                'advertised-host = "127.0.0.1"',
                "disable-telemetry = true",
                'log-filter = "warn"',
                "log-disable-ansi-codes = true",
                "[admin]",
                f'bind-address = "127.0.0.1:{admin}"',
                "[ingress]",
                f'bind-address = "127.0.0.1:{ingress}"',
                "",
            ]
        )
    )
    server_log = restate.folder / "restate-server.log"
    service_log = restate.folder / "service.log"
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with server_log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [
                        *(str(restate.server), "--config-file", str(config)),
                        *("--base-dir", str(data), "--bind-address", f"127.0.0.1:{node}"),
                        "--no-logo",
                    ],
                    cwd=restate.folder,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _until(lambda: _http(f"http://127.0.0.1:{admin}/health"), 60, "restate-server", server_log)
        hypercorn = restate.python.parent / "hypercorn"
        with service_log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [str(hypercorn), "--bind", f"127.0.0.1:{service}", "counter:app"],
                    cwd=restate.folder,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _until(
            lambda: socket.create_connection(("127.0.0.1", service), timeout=1).close(),
            30,
            "the counter service",
            service_log,
        )
        _http(
            f"http://127.0.0.1:{admin}/deployments",
            {"uri": f"http://127.0.0.1:{service}", "force": True},
            timeout=30,
        )
        url = f"http://127.0.0.1:{ingress}"
        _until(
            lambda: _http(f"{url}/BenchCounter/ready/increment", 0),
            60,
            "the ingress to route BenchCounter",
            server_log,
        )
        yield url
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(data, ignore_errors=True)
        config.unlink(missing_ok=True)
