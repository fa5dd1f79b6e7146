"""Entity RPCs over HTTP on a cluster: real runner processes on the real PostgreSQL
(`tests/cluster_worker.py`), and a real `plait serve --runner` in front of one of them.

A request through the proxy reaches whichever runner holds its entity (a persisted one through
the database, a volatile one over the runners' transport) and is answered once;
`GET /cluster` shows the runners, their shards and this runner's entities. Sized for a 2-core
machine: three runner processes at most.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from plait._native import shard_id
from tests.cli_support import Served, serve_runner
from tests.http_support import free_ports
from tests.test_cluster import LEASE_SECONDS, SHARDS, Cluster


@dataclass(frozen=True)
class Ports:
    """The proxy's runner's port and the other runners'."""

    proxy: int
    workers: tuple[int, int]


@pytest.fixture
def ports() -> Ports:
    # Runners listen at their address (the runners' transport): ports free now, not fixed
    # ones, so a cluster test run beside this one elsewhere on the machine does not take them.
    proxy, *workers = free_ports(3)
    return Ports(proxy, (workers[0], workers[1]))


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path, ports: Ports) -> Iterator[Cluster]:
    """Two runner processes serving `ClusterAccount` on a fresh database."""
    made = Cluster(postgres_url, tmp_path)
    try:
        for port in ports.workers:
            made.start(port)
        yield made
    finally:
        made.close()


def cluster_view(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/cluster")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def wait_until_settled(http: httpx.Client, runners: int, timeout: float = 60) -> dict[str, Any]:
    """Until the proxy's runner sees `runners` healthy runners sharing every shard."""
    deadline = time.monotonic() + timeout
    while True:
        view = cluster_view(http)
        owners = view["assignments"]
        if (
            view["healthyRunners"] == runners
            and len(owners) == runners
            and sum(len(o["shards"]) for o in owners) == SHARDS
            and (not view["address"] or len(view["shards"]) == len(_own(view)))
            and not view["releasing"]
        ):
            return view
        assert time.monotonic() < deadline, f"never settled on {runners} runners: {view}"
        time.sleep(0.1)


def _own(view: dict[str, Any]) -> list[str]:
    return next((o["shards"] for o in view["assignments"] if o["this"]), [])


def owner_of(view: dict[str, Any], entity_id: str) -> str:
    shard = f"default:{shard_id(entity_id, SHARDS)}"
    owner: str = next(o["address"] for o in view["assignments"] if shard in o["shards"])
    return owner


def stop(served: Served) -> None:
    if served.process.poll() is None:
        assert served.stop() == 0, "".join(served.log)


def test_rpcs_through_a_runner_s_proxy_reach_the_entity_s_runner(
    cluster: Cluster, postgres_url: str, tmp_path: Path, ports: Ports
) -> None:
    proxy_port, workers = ports.proxy, ports.workers
    served = serve_runner(postgres_url, f"127.0.0.1:{proxy_port}", tmp_path, LEASE_SECONDS)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            view = wait_until_settled(http, 3)
            me = f"127.0.0.1:{proxy_port}"
            assert view["cluster"] is True
            assert view["address"] == me
            assert {o["address"] for o in view["assignments"]} == {
                me,
                *(f"127.0.0.1:{port}" for port in workers),
            }
            accounts = [f"acct-{n}" for n in range(24)]
            owners = {account: owner_of(view, account) for account in accounts}
            assert len(set(owners.values())) == 3  # some on each runner
            for n, account in enumerate(accounts):
                body = {"key": f"h{n}", "amount": n + 1}
                first = http.post(f"/clusteraccount/deposit/{account}", json=body)
                again = http.post(f"/clusteraccount/deposit/{account}", json=body)
                assert (first.status_code, first.json()) == (200, n + 1), first.text
                assert again.json() == n + 1  # the stored reply
            # A volatile RPC goes to its entity's runner too, over the runners' transport:
            # `ClusterEcho.echo` answers with the port of the runner that ran it.
            port_of = {f"127.0.0.1:{port}": port for port in (*workers, proxy_port)}
            for n in range(24):
                echoed = http.post(f"/clusterecho/echo/echo-{n}", json={"n": n})
                assert echoed.status_code == 200, echoed.text
                assert echoed.json() == port_of[owner_of(view, f"echo-{n}")]
            for account in accounts:
                ledger = http.post(f"/clusteraccount/ledger/{account}")
                assert (ledger.status_code, ledger.json()["deposits"]) == (200, 1), ledger.text
            after = cluster_view(http)
            echoes_here = sum(owner_of(view, f"echo-{n}") == me for n in range(24))
            assert after["entityTypes"] == {
                "ClusterAccount": sum(owner == me for owner in owners.values()),
                "ClusterEcho": echoes_here,
            }
    finally:
        stop(served)
    # Each deposit ran once, on the runner that owns its account.
    runs = [run for run in cluster.runs() if run.key.startswith("h")]
    assert sorted(run.key for run in runs) == sorted(f"h{n}" for n in range(24))
    for run in runs:
        account = f"acct-{int(run.key[1:])}"
        assert run.port == port_of[owners[account]], (run, owners[account])


def test_a_client_only_proxy_holds_no_shard_and_forwards_persisted_rpcs(
    cluster: Cluster, postgres_url: str, tmp_path: Path, ports: Ports
) -> None:
    workers = ports.workers
    served = serve_runner(postgres_url, "client", tmp_path, LEASE_SECONDS)
    try:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            view = wait_until_settled(http, 2)
            # A client-only process holds no shard; it reads the ring to route.
            assert view["cluster"] is True
            assert view["address"] is None
            assert view["shards"] == []
            assert {o["address"] for o in view["assignments"]} == {
                f"127.0.0.1:{port}" for port in workers
            }
            assert not any(o["this"] for o in view["assignments"])
            sent = http.post(
                "/clusteraccount/deposit/acct-c/discard", json={"key": "c1", "amount": 5}
            )
            assert sent.status_code == 204
            answered = http.post("/clusteraccount/deposit/acct-c", json={"key": "c2", "amount": 2})
            assert (answered.status_code, answered.json()) == (200, 7)
            ledger = http.post("/clusteraccount/ledger/acct-c")  # volatile, to its owner
            assert (ledger.status_code, ledger.json()) == (200, {"total": 7, "deposits": 2})
            invalid = http.post("/clusteraccount/deposit/acct-c", json={"key": "c3"})
            assert (invalid.status_code, invalid.json()["_tag"]) == (422, "MalformedMessage")
    finally:
        stop(served)
    assert sorted(run.key for run in cluster.runs()) == ["c1", "c2"]  # each once
    assert {run.port for run in cluster.runs()} <= set(workers)
