from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import plait
import plait.errors

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_resolve() -> None:
    for name in plait.__all__:
        assert hasattr(plait, name), name
    assert "_native" not in plait.__all__


def test_primitives_live_in_their_own_modules() -> None:
    moved = {
        "sharding": (
            "DEFAULT_SHARDS_PER_GROUP",
            "HashRing",
            "hash_string",
            "shard_id",
            "shard_ids",
        ),
        "timers": ("TimerService", "TimerWheel", "wall_clock_ms"),
        "snowflake": ("Snowflake", "SnowflakeGenerator", "SnowflakeParts"),
    }
    for module, names in moved.items():
        found = importlib.import_module(f"plait.{module}")
        assert getattr(plait, module) is found
        for name in names:
            assert name in found.__all__, (module, name)
            assert not hasattr(plait, name), name
    for name in ("execution_id", "activity_idempotency_key", "DeferredToken"):
        assert name in plait.__all__


def test_every_exception_derives_from_plait_error() -> None:
    classes = [
        value
        for value in vars(plait.errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert len(classes) >= 5
    for cls in classes:
        assert issubclass(cls, plait.PlaitError), cls
        assert getattr(plait, cls.__name__) is cls


def test_version_matches_the_crate() -> None:
    cargo = (ROOT / "rust" / "Cargo.toml").read_text()
    assert f'version = "{plait.__version__}"' in cargo


@pytest.mark.timeout(900)
def test_one_abi3_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    wheels = list(tmp_path.glob("plait-*.whl"))
    assert len(wheels) == 1
    assert "-cp311-abi3-" in wheels[0].name
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert {"plait/__init__.py", "plait/py.typed", "plait/_native.pyi"} <= set(names)
    dashboard = {f"plait/http/dashboard/{name}" for name in ("index.html", "app.js", "app.css")}
    assert dashboard <= set(names)  # the dashboard's files ship in the wheel
    assert any(n.startswith("plait/_native") and n.endswith(".so") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The dependencies come from the registry; plait itself only from the wheel just built.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", *dependencies], check=True, timeout=300
    )
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", str(wheels[0])],
        check=True,
        timeout=300,
    )
    done = subprocess.run(
        [python, "-c", "from plait.sharding import shard_id; print(shard_id('entity-1'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "231"
