"""Property-based fuzzing of the proxy from its own OpenAPI schema (schemathesis, hypothesis):
valid and invalid requests to every route, bounded in examples and time, and no 5xx.

The served workflows and entity RPCs succeed for every payload that validates, so any 5xx is
the proxy's fault: an input it failed to refuse with a 4xx. The answers must also be among
those the schema lists, in the shapes it gives. (Not checked: that every request outside the
schema is refused. pydantic validates in lax mode, as plait does everywhere: `true` is accepted
for an integer field and a number of seconds for a datetime, which the schema's types do not
list.)
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel, Field
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

import plait
from plait.http import proxy_app, proxy_server


class Address(BaseModel):
    street: str
    zip_code: str = Field(max_length=10)


class Everything(BaseModel):
    """A payload with one field of each kind a payload has."""

    text: str
    count: int
    ratio: float
    flag: bool
    tags: list[str]
    scores: dict[str, int]
    address: Address
    note: str | None = None
    kind: Literal["a", "b", "c"] = "a"
    when: datetime.datetime | None = None
    ref: uuid.UUID | None = None


class NeverRaised(plait.TaggedError):
    reason: str


FuzzEcho = plait.Workflow("FuzzEcho", payload=Everything, success=Everything, error=NeverRaised)


@FuzzEcho.implement
async def echo(payload: Everything, execution_id: str) -> Everything:
    return payload


FuzzVoid = plait.Workflow("FuzzVoid", payload={"id": str, "n": int})


@FuzzVoid.implement
async def nothing(payload: Any, execution_id: str) -> None:
    return None


FuzzGate = plait.DurableDeferred("FuzzGate", success=int, error=NeverRaised)

FuzzBox = plait.Entity("FuzzBox")


@FuzzBox.rpc(persisted=True, primary_key=lambda payload: payload.text, error=NeverRaised)
async def put(ctx: plait.EntityContext[None], payload: Everything) -> Everything:
    return payload


@FuzzBox.rpc()
async def peek(ctx: plait.EntityContext[None]) -> int:
    return 0


@FuzzBox.rpc()
async def add(ctx: plait.EntityContext[None], n: int) -> int:
    return n + 1


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy, live on a loopback port, run by uvicorn in a thread of its own."""
    database = Path(tmp_path_factory.mktemp("fuzz")) / "plait.db"
    app = proxy_app(
        [FuzzEcho, FuzzVoid],
        engine=plait.Engine.sqlite(database),
        entities=[FuzzBox],
        deferreds=[FuzzGate],
        max_body_bytes=64 * 1024,
    )
    server = proxy_server(app, port=0, log_level="warning")
    thread = threading.Thread(target=server.run, name="fuzzed-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the proxy stopped"
        assert time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


EXAMPLES = 40  # per route and per mode (valid, invalid): about 1,000 requests in all


@pytest.mark.timeout(600)
def test_no_request_gets_a_5xx(proxy_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{proxy_url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        response_schema_conformance,
    ]
    tried = []
    for found in api.get_all_operations():
        assert isinstance(found, Ok), found  # the schema is valid OpenAPI
        operation = found.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,  # the same examples every run: a failure replays
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def request(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(checks=checks, timeout=30)

            try:
                request()
            except Unsatisfiable:
                # Nothing to get wrong in a request with no parameters (GET /health, GET /metrics).
                assert mode is GenerationMode.NEGATIVE
                assert not operation.body
                assert not operation.path_parameters
                continue
            tried.append((operation.label, mode.value))
    # Every route, valid and invalid requests (none invalid for the four without input:
    # GET /health, /metrics, /entities, /cluster): health, metrics, the deferred's, six of the
    # operators' (list, counts, timeline, interrupt, resume, cancel), seven per workflow for two
    # workflows, two per RPC for three RPCs, and the entities' and the cluster's.
    assert len(tried) == 2 * (3 + 6 + 2 * 7 + 3 * 2 + 2) - 4, tried
