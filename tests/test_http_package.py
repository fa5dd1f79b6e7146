"""The `http` extra: declared, pinned for development, and never loaded by `import plait`."""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from pathlib import Path

import plait
import plait.http.errors
from tests.child import run_python

ROOT = Path(__file__).resolve().parent.parent
WEB = ("fastapi", "starlette", "uvicorn", "httpx", "aiohttp", "typer", "click", "rich")

LOADED = """
import json, sys
import plait
step = {"plait": sorted(m for m in WEB if m in sys.modules)}
import plait.http
step["plait.http"] = sorted(m for m in WEB if m in sys.modules)
plait.Client
step["plait.Client"] = sorted(m for m in WEB if m in sys.modules)
plait.http.proxy_app
step["plait.http.proxy_app"] = sorted(m for m in WEB if m in sys.modules)
print(json.dumps(step))
"""


def test_import_plait_loads_no_web_library() -> None:
    done = run_python("-c", f"WEB = {WEB!r}\n{LOADED}", timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert loaded["plait"] == []
    assert loaded["plait.http"] == []
    # The client alone: no server library. (httpx loads click and rich for its own command
    # line when they are installed.)
    assert {"httpx", "aiohttp"} <= set(loaded["plait.Client"])
    assert not {"fastapi", "starlette", "uvicorn", "typer"} & set(loaded["plait.Client"])
    assert {"fastapi", "starlette"} <= set(loaded["plait.http.proxy_app"])
    assert plait.Client is plait.http.Client


def test_the_extra_is_declared_and_pinned_for_development() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=\[]", spec)[0] for spec in project["optional-dependencies"]["http"]}
    # prometheus-client: the proxy's /metrics.
    assert extra == {
        "fastapi",
        "uvicorn",
        "httptools",
        "httpx",
        "httpx-aiohttp",
        "typer",
        "prometheus-client",
    }
    assert project["scripts"] == {"plait": "plait.cli:main"}
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert extra <= pinned
    metrics = {re.split(r"[<>=]", spec)[0] for spec in project["optional-dependencies"]["metrics"]}
    observability = {"opentelemetry-api", "opentelemetry-sdk", "prometheus-client"}
    assert metrics == {"prometheus-client"}
    assert observability <= pinned
    assert any(spec.startswith("opentelemetry-api") for spec in project["dependencies"])


def test_every_http_exception_derives_from_plait_error() -> None:
    classes = [
        value
        for value in vars(plait.http.errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == "plait.http.errors"
    ]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, plait.PlaitError), cls
        assert getattr(plait.http, cls.__name__) is cls
