"""The `plait` command through its real entry point, in child processes: `plait serve` serving
a module's workflows on a loopback port, and the commands that act on them through it.

The exit codes are part of the interface (`plait.cli.ExitCode`): each test checks them.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import plait
from plait.cli import ExitCode
from tests import http_workflows as wf
from tests.cli_support import ROOT, Served, plait_cli, start_serving

ORDER: dict[str, Any] = {"order_id": "o-cli", "email": "a@example.org", "amount_cents": 250_000}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            assert server.stop() == 0


def test_help_on_every_command() -> None:
    done = plait_cli("--help")
    assert done.returncode == ExitCode.OK, done.stderr
    for command in (
        "serve",
        "status",
        "interrupt",
        "resume",
        "cancel",
        "list",
        "show",
        "resume-all",
        "migrate",
    ):
        assert command in done.stdout
        helped = plait_cli(command, "--help")
        assert helped.returncode == ExitCode.OK, (command, helped.stderr)
        assert "Usage" in helped.stdout
    assert "Exit codes" in done.stdout
    assert plait_cli().returncode == ExitCode.USAGE  # no command: the help, and exit 2
    assert plait_cli("status").returncode == ExitCode.USAGE
    assert plait_cli("frobnicate").returncode == ExitCode.USAGE


def test_status_interrupt_and_resume_through_the_served_proxy(served: Served) -> None:
    started = httpx.post(f"{served.url}/httpprocessorder/discard", json=ORDER, timeout=30)
    execution_id = started.headers["plait-execution-id"]
    url = ("--url", served.url)
    deadline = time.monotonic() + 30
    status = plait_cli("status", "HttpProcessOrder", execution_id, *url, "--json")
    while json.loads(status.stdout)["status"] == "running" and time.monotonic() < deadline:
        status = plait_cli("status", "HttpProcessOrder", execution_id, *url, "--json")
    assert status.returncode == ExitCode.OK, status.stderr
    assert json.loads(status.stdout) == {
        "executionId": execution_id,
        "workflow": "HttpProcessOrder",
        "status": "suspended",
        "result": None,
        "error": None,
    }
    text = plait_cli("status", "httpprocessorder", execution_id, *url)  # any case
    assert text.returncode == ExitCode.OK
    assert re.search(r"status\s+suspended", text.stdout), text.stdout

    resumed = plait_cli("resume", "HttpProcessOrder", execution_id, *url, "--json")
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is True

    interrupted = plait_cli("interrupt", "HttpProcessOrder", execution_id, *url)
    assert interrupted.returncode == ExitCode.OK, interrupted.stderr
    assert f"interrupted HttpProcessOrder {execution_id}" in interrupted.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        final = json.loads(
            plait_cli("status", "HttpProcessOrder", execution_id, *url, "--json").stdout
        )
        if final["status"] != "suspended":
            break
    assert final["status"] == "failed"
    assert final["error"] == {"_tag": "Interrupt", "executionId": execution_id}


def test_exit_codes_scripts_rely_on(served: Served) -> None:
    url = ("--url", served.url)
    unknown = plait_cli("status", "HttpProcessOrder", "0" * 32, *url, "--json")
    assert unknown.returncode == ExitCode.NOT_FOUND
    assert json.loads(unknown.stdout)["error"]["_tag"] == "UnknownExecutionError"
    no_workflow = plait_cli("status", "NoSuchWorkflow", "0" * 32, *url)
    assert no_workflow.returncode == ExitCode.NOT_FOUND
    assert "NotFoundError" in no_workflow.stderr
    malformed = plait_cli("interrupt", "HttpProcessOrder", "not-an-id", *url, "--json")
    assert malformed.returncode == ExitCode.INVALID
    assert json.loads(malformed.stdout)["error"]["_tag"] == "InvalidRequestError"
    nobody = plait_cli("status", "HttpProcessOrder", "0" * 32, "--url", "http://127.0.0.1:9")
    assert nobody.returncode == ExitCode.UNREACHABLE
    assert "ProxyUnavailableError" in nobody.stderr


def test_a_served_token_is_required(tmp_path: Path) -> None:
    token = uuid.uuid4().hex * 2
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}", "--token", token)
    try:
        url = ("--url", server.url)
        refused = plait_cli("status", "Hold", "0" * 32, *url)
        wrong = plait_cli("status", "Hold", "0" * 32, *url, "--token", token[::-1])
        allowed = plait_cli("status", "Hold", "0" * 32, *url, PLAIT_TOKEN=token)
        health = httpx.get(f"{server.url}/health", timeout=10)
    finally:
        assert server.stop() == 0
    assert refused.returncode == wrong.returncode == ExitCode.REFUSED
    assert "UnauthorizedError" in refused.stderr
    assert allowed.returncode == ExitCode.NOT_FOUND  # let in; no such execution
    assert health.status_code == 200


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    database = f"sqlite://{tmp_path / 'plait.db'}"
    beyond = plait_cli("serve", "tests.http_workflows", "--host", "0.0.0.0", "--database", database)
    assert beyond.returncode == ExitCode.REFUSED
    assert "TokenRequiredError" in beyond.stderr
    assert not (tmp_path / "plait.db").exists()  # refused before opening anything
    missing = plait_cli("serve", "tests.no_such_module", "--database", database)
    assert missing.returncode == ExitCode.NOT_FOUND
    assert "ModuleNotFoundError" in missing.stderr
    empty = plait_cli("serve", "tests.conftest", "--database", database)
    assert empty.returncode == ExitCode.NOT_FOUND
    assert "defines no plait.Workflow" in empty.stderr


def test_serve_from_a_file_on_a_database_another_engine_holds(tmp_path: Path) -> None:
    database = f"sqlite://{tmp_path / 'plait.db'}"
    server = start_serving(database)
    try:
        held = plait_cli("serve", str(ROOT / "tests" / "http_workflows.py"), "--database", database)
        migrating = plait_cli("migrate", database, "--json")
    finally:
        assert server.stop() == 0
    assert held.returncode == ExitCode.REFUSED
    assert "EngineLockedError" in held.stderr
    assert migrating.returncode == ExitCode.REFUSED
    assert json.loads(migrating.stdout)["error"]["_tag"] == "EngineLockedError"


def test_migrate_creates_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    done = plait_cli("migrate", f"sqlite://{path}")
    assert done.returncode == ExitCode.OK, done.stderr
    assert "current schema" in done.stdout
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    assert {"plait_executions", "plait_journal", "plait_deferreds", "plait_timers"} <= tables
    again = plait_cli("migrate", f"sqlite://{path}", "--json")
    assert again.returncode == ExitCode.OK
    assert json.loads(again.stdout)["migrated"] is True


def test_migrate_postgres_and_an_unreachable_one(postgres_url: str) -> None:
    done = plait_cli("migrate", postgres_url, "--prefix", "app_", "--json")
    assert done.returncode == ExitCode.OK, done.stdout + done.stderr
    assert json.loads(done.stdout) == {"database": postgres_url, "prefix": "app_", "migrated": True}
    name = postgres_url.rsplit("/", 1)[1]
    listed = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            name,
            "-qAtc",
            "select tablename from pg_tables where tablename like 'app_%'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "app_executions" in listed.stdout.split()
    unreachable = plait_cli("migrate", "postgres://plait:secret@127.0.0.1:9/none", "--json")
    assert unreachable.returncode == ExitCode.UNREACHABLE
    error = json.loads(unreachable.stdout)["error"]
    assert error["_tag"] == "StoreConnectError"
    assert "secret" not in unreachable.stdout + unreachable.stderr


def test_served_workflows_run_and_survive_a_restart(tmp_path: Path) -> None:
    database = f"sqlite://{tmp_path / 'plait.db'}"
    server = start_serving(database)
    try:
        started = httpx.post(f"{server.url}/httpprocessorder/discard", json=ORDER, timeout=30)
        execution_id = started.headers["plait-execution-id"]
    finally:
        assert server.stop() == 0
    server = start_serving(database)
    try:
        token = wf.Approval.token_from_execution_id(wf.ProcessOrder, execution_id)
        completed = httpx.post(
            f"{server.url}/deferred/{token}", json={"_tag": "Success", "value": "cli"}, timeout=30
        )
        assert completed.json() == {"stored": True}
        result = httpx.post(f"{server.url}/httpprocessorder", json=ORDER, timeout=30)
    finally:
        assert server.stop() == 0
    assert result.status_code == 200
    assert result.json()["approved_by"] == "cli"
    assert plait.execution_id("HttpProcessOrder", ORDER["order_id"]) == execution_id


def seed_orders(url: str) -> dict[str, str]:
    """Orders that succeed, fail and wait for approval, through the proxy: ids by name."""
    orders = {
        "paid": {**ORDER, "order_id": "paid", "amount_cents": 4999},
        "declined": {**ORDER, "order_id": "declined", "amount_cents": 0},
        "wait-1": {**ORDER, "order_id": "wait-1"},
        "wait-2": {**ORDER, "order_id": "wait-2"},
    }
    ids = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, body in orders.items():
            if name.startswith("wait"):
                ids[name] = http.post("/httpprocessorder/discard", json=body).headers[
                    "plait-execution-id"
                ]
            else:
                http.post("/httpprocessorder", json=body)
                ids[name] = wf.ProcessOrder.execution_id(body)
        deadline = time.monotonic() + 30
        for name in ("wait-1", "wait-2"):
            while http.get(f"/executions/{ids[name]}").json()["status"] != "suspended":
                assert time.monotonic() < deadline
                time.sleep(0.02)
    return ids


def test_list_and_show_through_the_served_proxy(served: Served) -> None:
    ids = seed_orders(served.url)
    url = ("--url", served.url)
    listed = plait_cli("list", *url, "--json")
    assert listed.returncode == ExitCode.OK, listed.stderr
    page = json.loads(listed.stdout)
    statuses = {e["executionId"]: e["status"] for e in page["executions"]}
    assert statuses == {
        ids["paid"]: "succeeded",
        ids["declined"]: "failed",
        ids["wait-1"]: "suspended",
        ids["wait-2"]: "suspended",
    }
    assert page["executions"][0]["executionId"] == ids["wait-2"]  # newest first
    assert page["next"] is None

    failed = json.loads(plait_cli("list", *url, "--status", "failed", "--json").stdout)
    assert [e["executionId"] for e in failed["executions"]] == [ids["declined"]]
    assert failed["executions"][0]["error"]["error"]["_tag"] == "CardDeclined"
    assert json.loads(plait_cli("list", *url, "-w", "Hold", "--json").stdout)["executions"] == []

    # A page at a time, through --after.
    seen: list[str] = []
    after: list[str] = []
    for _ in range(5):
        one = json.loads(plait_cli("list", *url, "--limit", "1", *after, "--json").stdout)
        seen.extend(e["executionId"] for e in one["executions"])
        if one["next"] is None:
            break
        after = ["--after", one["next"]]
    assert seen == [e["executionId"] for e in page["executions"]]
    recent = json.loads(plait_cli("list", *url, "--since", "1h", "--json").stdout)
    assert len(recent["executions"]) == 4
    future = json.loads(plait_cli("list", *url, "--since", "2999-01-01T00:00", "--json").stdout)
    assert future["executions"] == []

    # For people: the status counts, then a table.
    text = plait_cli("list", *url)
    assert text.returncode == ExitCode.OK, text.stderr
    assert re.search(r"suspended 2\s+succeeded 1\s+failed 1", text.stdout), text.stdout
    assert ids["declined"] in text.stdout
    assert "CardDeclined" in text.stdout

    shown = plait_cli("show", ids["paid"], *url, "--json")
    assert shown.returncode == ExitCode.OK, shown.stderr
    timeline = json.loads(shown.stdout)
    assert timeline["status"] == "succeeded"
    assert timeline["result"]["charge_id"] == "ch_paid"
    assert [(e["kind"], e["name"]) for e in timeline["events"]] == [
        ("started", "HttpProcessOrder"),
        ("activity", "HttpCharge"),
        ("completed", "HttpProcessOrder"),
    ]
    text = plait_cli("show", ids["wait-1"], *url)
    assert text.returncode == ExitCode.OK
    assert "timeline" in text.stdout
    assert re.search(r"status\s+suspended", text.stdout), text.stdout

    # Scripts rely on the exit codes.
    missing = plait_cli("show", "0" * 32, *url, "--json")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert json.loads(missing.stdout)["error"]["_tag"] == "UnknownExecutionError"
    assert plait_cli("list", *url, "--since", "last tuesday").returncode == ExitCode.USAGE
    assert plait_cli("list", *url, "--status", "done").returncode == ExitCode.USAGE
    assert plait_cli("list", *url, "--limit", "0").returncode == ExitCode.USAGE
    bad_cursor = plait_cli("list", *url, "--after", "nowhere", "--json")
    assert bad_cursor.returncode == ExitCode.INVALID
    nobody = plait_cli("list", "--url", "http://127.0.0.1:9")
    assert nobody.returncode == ExitCode.UNREACHABLE


def test_cancel_and_resume_all_through_the_served_proxy(served: Served) -> None:
    ids = seed_orders(served.url)
    url = ("--url", served.url)
    resumed = plait_cli("resume-all", *url)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert "resumed 2 of 2" in resumed.stdout
    assert "resuming" in resumed.stderr  # the progress bar
    assert "2/2" in resumed.stderr
    as_json = json.loads(plait_cli("resume-all", *url, "--json").stdout)
    assert sorted(as_json["resumed"]) == sorted([ids["wait-1"], ids["wait-2"]])
    assert as_json["failed"] == {}
    none = json.loads(plait_cli("resume-all", *url, "-w", "Hold", "--json").stdout)
    assert none == {"resumed": [], "failed": {}}

    cancelled = plait_cli("cancel", "HttpProcessOrder", ids["wait-1"], *url, "--json")
    assert cancelled.returncode == ExitCode.OK, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] is True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = json.loads(plait_cli("show", ids["wait-1"], *url, "--json").stdout)
        if found["status"] != "suspended":
            break
    assert found["status"] == "interrupted"
    assert found["events"][-1]["error"] == {"_tag": "Interrupt", "executionId": ids["wait-1"]}
    unknown = plait_cli("cancel", "HttpProcessOrder", "0" * 32, *url)
    assert unknown.returncode == ExitCode.NOT_FOUND


def test_serve_serves_the_entities_a_module_defines(tmp_path: Path) -> None:
    server = start_serving(f"sqlite://{tmp_path / 'plait.db'}", module="tests.http_entities")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            step = {"request_key": "k1", "by": 3}
            called = http.post("/httpcounter/increment/c-1", json=step)
            again = http.post("/httpcounter/increment/c-1", json=step)
            listed = http.get("/entities").json()
            workflow = http.post("/hold/discard", json={"key": "cli-entities"})
    finally:
        assert server.stop() == 0
    assert (called.status_code, called.json(), again.json()) == (200, 3, 3)
    assert [entity["name"] for entity in listed] == ["HttpCounter", "HttpGate"]
    assert workflow.status_code == 204  # the workflows it imports are served too
    assert any("HttpCounter, HttpGate" in line for line in server.log)


def test_serve_as_a_runner_needs_postgresql_and_an_address(tmp_path: Path) -> None:
    sqlite = f"sqlite://{tmp_path / 'plait.db'}"
    on_sqlite = plait_cli("serve", "tests.http_entities", "--runner", "127.0.0.1:4700",
                          "--database", sqlite)  # fmt: skip
    assert on_sqlite.returncode == ExitCode.USAGE
    assert "PostgreSQL" in on_sqlite.stderr
    postgres = "postgresql://postgres@127.0.0.1:5432/unused"
    nowhere = plait_cli("serve", "tests.http_entities", "--runner", "nowhere",
                        "--database", postgres)  # fmt: skip
    assert nowhere.returncode == ExitCode.USAGE
    assert "HOST:PORT" in nowhere.stderr
    assert not (tmp_path / "plait.db").exists()  # refused before opening anything
