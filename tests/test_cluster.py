"""A cluster of real runner processes on the real PostgreSQL (see `tests/cluster_worker.py`).

Shards spread over the runners by the ring and follow joins and leaves; a SIGKILLed runner's
shards are taken over within the lease expiry with every persisted request answered once and
every deposit applied once; a runner SIGSTOPped past its lease cannot commit when it wakes.
Sized for a 2-core machine: at most four runner processes at a time.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import psql

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 300  # one group, the default
LEASE_SECONDS = 3.0


@dataclass(frozen=True)
class Run:
    """One handler run, as the worker recorded it."""

    key: str
    port: int
    start: int
    end: int


def amount_of(n: int) -> int:
    return n % 7 + 1  # as tests/cluster_worker.py deposits


class Cluster:
    """Starts runner processes of one cluster and reads what they write."""

    def __init__(
        self, url: str, out: Path, module: str = "tests.cluster_worker", **env: str
    ) -> None:
        self.url, self.out, self.module = url, out, module
        self.env = {**os.environ, "CLUSTER_LEASE_SECONDS": str(LEASE_SECONDS), **env}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, requests: int = 0, accounts: int = 1) -> None:
        log = open(self.out / f"log-{port}", "ab")  # noqa: SIM115 - the child writes it
        self.processes[port] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                self.url,
                "plait_",
                str(port),
                str(self.out),
                str(requests),
                str(accounts),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def signal(self, port: int, sig: signal.Signals) -> None:
        os.kill(self.processes[port].pid, sig)

    def stop(self, port: int, timeout: float = 30) -> None:
        """A graceful leave: SIGTERM, and the process exits cleanly."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout) == 0, self.log(port)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait(10)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)

    def log(self, port: int) -> str:
        path = self.out / f"log-{port}"
        return path.read_text()[-4000:] if path.exists() else ""

    def view(self, port: int) -> dict[str, int] | None:
        path = self.out / f"view-{port}.json"
        if not path.exists():
            return None
        view: dict[str, int] = json.loads(path.read_text())
        return view

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 60) -> float:
        """Waits until `ready()`; returns the seconds it took."""
        began = time.monotonic()
        while not ready():
            for port, process in self.processes.items():
                assert process.poll() is None, f"runner {port} exited:\n{self.log(port)}"
            assert time.monotonic() - began < timeout, f"not within {timeout} s: {what}"
            time.sleep(0.05)
        return time.monotonic() - began

    def settled(self, ports: Iterable[int]) -> bool:
        """Every runner of `ports` is seen healthy by all, holds exactly the shards the ring
        gives it, drains none, and together they hold every shard."""
        ports = list(ports)
        views = [self.view(port) for port in ports]
        if any(view is None or time.time() - view["time"] > 2 for view in views):
            return False
        return (
            all(view["healthy"] == len(ports) for view in views if view)
            and all(view["shards"] == view["assigned"] for view in views if view)
            and all(view["releasing"] == 0 for view in views if view)
            and sum(view["shards"] for view in views if view) == SHARDS
        )

    def shards(self, ports: Iterable[int]) -> dict[int, int]:
        return {port: (self.view(port) or {}).get("shards", 0) for port in ports}

    def runs(self) -> list[Run]:
        path = self.out / "effects"
        lines = path.read_text().splitlines() if path.exists() else []
        runs = []
        for line in lines:
            key, port, start, end = line.split()
            runs.append(Run(key, int(port), int(start), int(end)))
        return runs

    def replies(self, port: int) -> dict[str, int]:
        replies: dict[str, int] = {}
        for line in (self.out / f"replies-{port}").read_text().splitlines():
            key, value = line.split()
            assert key not in replies, f"two replies for {key}"
            replies[key] = int(value)
        return replies


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterable[Cluster]:
    made = Cluster(postgres_url, tmp_path)
    try:
        yield made
    finally:
        made.close()


def check_deposits(replies: dict[str, int], requests: int, accounts: int) -> None:
    """Every deposit has one reply, and each account's state changed once per deposit: its
    replies (the running total after each deposit) are distinct, and the last is the sum."""
    assert set(replies) == {f"d{n}" for n in range(requests)}
    for account in range(accounts):
        ns = range(account, requests, accounts)
        totals = sorted(replies[f"d{n}"] for n in ns)
        assert len(set(totals)) == len(totals), f"acct-{account}: a deposit applied twice"
        assert totals[-1] == sum(amount_of(n) for n in ns), f"acct-{account}: wrong total"


def check_no_overlap(runs: list[Run], accounts: int) -> None:
    """One live instance per entity at a time: the runs of one account never overlap."""
    by_account: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_account[int(run.key[1:]) % accounts].append(run)
    for account, account_runs in by_account.items():
        account_runs.sort(key=lambda run: run.start)
        for before, after in itertools.pairwise(account_runs):
            assert before.end <= after.start, f"acct-{account}: {before} overlaps {after}"


def test_shards_follow_the_ring_as_runners_join_and_leave(cluster: Cluster) -> None:
    ports = [4101, 4102, 4103]
    for port in ports:
        cluster.start(port)
    cluster.wait("three runners settle", lambda: cluster.settled(ports))
    assert cluster.shards(ports) == dict.fromkeys(ports, 100)
    machine_ids = {(cluster.view(port) or {})["machine_id"] for port in ports}
    assert len(machine_ids) == 3, "each runner has its own machine id"

    # A fourth joins and sends deposits while the shards move to it; then one leaves.
    requests, accounts = 1_200, 120
    cluster.start(4104, requests, accounts)
    ports.append(4104)
    cluster.wait("four runners settle", lambda: cluster.settled(ports))
    counts = cluster.shards(ports)
    assert sum(counts.values()) == SHARDS
    assert min(counts.values()) > 0, counts
    (cluster.out / "go").touch()
    cluster.wait("deposits begin", lambda: len(cluster.runs()) >= requests // 4)
    cluster.stop(4102)
    ports.remove(4102)
    cluster.wait("the sender is done", (cluster.out / "done-4104").exists, timeout=120)
    cluster.wait("three runners settle again", lambda: cluster.settled(ports))
    assert cluster.shards(ports) == dict.fromkeys(ports, 100)

    check_deposits(cluster.replies(4104), requests, accounts)
    runs = cluster.runs()
    # Shards moved by draining, never by a crash: each deposit ran exactly once.
    assert sorted(run.key for run in runs) == sorted(f"d{n}" for n in range(requests))
    check_no_overlap(runs, accounts)


def test_a_killed_runners_shards_are_taken_over_and_nothing_is_lost(cluster: Cluster) -> None:
    requests, accounts = 2_000, 1_000
    sender, survivor, victim = 4201, 4202, 4203
    cluster.start(sender, requests, accounts)
    cluster.start(survivor)
    cluster.start(victim)
    ports = [sender, survivor, victim]
    cluster.wait("three runners settle", lambda: cluster.settled(ports))
    (cluster.out / "go").touch()
    cluster.wait("deposits begin", lambda: len(cluster.runs()) >= requests // 4)
    cluster.kill(victim)
    killed_at = time.monotonic()
    ports.remove(victim)
    cluster.wait("the survivors hold every shard", lambda: cluster.settled(ports))
    taken_over = time.monotonic() - killed_at
    assert taken_over < 2 * LEASE_SECONDS, f"shards re-owned after {taken_over:.1f} s"
    cluster.wait("the sender is done", (cluster.out / f"done-{sender}").exists, timeout=180)

    check_deposits(cluster.replies(sender), requests, accounts)
    runs = cluster.runs()
    assert {run.key for run in runs} == {f"d{n}" for n in range(requests)}
    times: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        times[run.key].append(run)
    again = {key: key_runs for key, key_runs in times.items() if len(key_runs) > 1}
    # A handler ran again only for a request the killed runner had run without committing,
    # at most once more, and at most one such request per entity.
    for key_runs in again.values():
        assert len(key_runs) == 2, key_runs
        assert key_runs[0].port == victim or key_runs[1].port == victim, key_runs
    assert len({int(key[1:]) % accounts for key in again}) == len(again)
    check_no_overlap(runs, accounts)


def test_a_runner_paused_past_its_lease_cannot_commit_when_it_wakes(cluster: Cluster) -> None:
    # Handlers take up to 200 ms, so the paused runner is caught inside many of them.
    cluster.env["CLUSTER_HANDLER_SECONDS"] = "0.2"
    requests, accounts = 2_000, 100
    sender, sleeper = 4301, 4302
    cluster.start(sender, requests, accounts)
    cluster.start(sleeper)
    ports = [sender, sleeper]
    cluster.wait("two runners settle", lambda: cluster.settled(ports))
    (cluster.out / "go").touch()
    cluster.wait("deposits begin", lambda: len(cluster.runs()) >= requests // 10)

    cluster.signal(sleeper, signal.SIGSTOP)
    stopped, stopped_ns = time.monotonic(), time.time_ns()
    # Its lease lapses by the database's clock: the other runner takes every shard.
    cluster.wait(
        "the sender holds every shard",
        lambda: cluster.shards([sender])[sender] == SHARDS,
        timeout=4 * LEASE_SECONDS,
    )
    time.sleep(max(0.0, 1.5 * LEASE_SECONDS - (time.monotonic() - stopped)))
    cluster.signal(sleeper, signal.SIGCONT)
    cluster.wait("the sender is done", (cluster.out / f"done-{sender}").exists, timeout=180)
    cluster.wait("two runners settle again", lambda: cluster.settled(ports))

    # Whatever the woken runner finished, its writes were refused: each deposit changed its
    # account's state once, each request has one reply.
    check_deposits(cluster.replies(sender), requests, accounts)
    runs = cluster.runs()
    assert {run.key for run in runs} == {f"d{n}" for n in range(requests)}
    # The handlers caught by the pause ended after it, on a runner that no longer held their
    # shards: none of their writes committed (the database refused them, or the runner held
    # them back once it saw its leases gone), so the new owner ran each of them again.
    late = [run for run in runs if run.port == sleeper and run.start < stopped_ns < run.end]
    assert late, "no handler was caught by the pause: lengthen the handlers"
    for run in late:
        assert sum(other.key == run.key for other in runs) == 2, f"{run.key} was not re-run"


def test_a_runner_whose_sessions_are_terminated_carries_on(
    cluster: Cluster, postgres_url: str
) -> None:
    requests, accounts = 1_000, 100
    sender, other = 4401, 4402
    cluster.start(sender, requests, accounts)
    cluster.start(other)
    ports = [sender, other]
    cluster.wait("two runners settle", lambda: cluster.settled(ports))
    (cluster.out / "go").touch()
    cluster.wait("deposits begin", lambda: len(cluster.runs()) >= requests // 5)
    # An operator (or an idle timeout) ends every session of the database but this one.
    database = postgres_url.rsplit("/", 1)[1]
    psql(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity "
        f"where datname = '{database}' and pid <> pg_backend_pid()"
    )
    cluster.wait("the sender is done", (cluster.out / f"done-{sender}").exists, timeout=180)
    cluster.wait("two runners settle again", lambda: cluster.settled(ports))
    check_deposits(cluster.replies(sender), requests, accounts)
    check_no_overlap(cluster.runs(), accounts)


def ticks(cluster: Cluster) -> list[tuple[int, int]]:
    """The singleton's ticks, (time, port), in time order."""
    path = cluster.out / "singleton"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted((int(at), int(port)) for port, at in (line.split() for line in lines))


def test_a_singleton_runs_on_one_runner_at_a_time(cluster: Cluster) -> None:
    ports = [4501, 4502, 4503]
    for port in ports:
        cluster.start(port)
    cluster.wait("three runners settle", lambda: cluster.settled(ports))
    cluster.wait("the singleton runs", lambda: len(ticks(cluster)) >= 5)
    first = ticks(cluster)[-1][1]

    cluster.kill(first)
    killed_at = time.time_ns()
    ports.remove(first)
    cluster.wait("it runs again", lambda: ticks(cluster)[-1][1] != first)
    moved_after = (ticks(cluster)[-1][0] - killed_at) / 1e9
    assert moved_after < 2 * LEASE_SECONDS, f"the singleton ran again after {moved_after:.1f} s"
    second = ticks(cluster)[-1][1]

    cluster.stop(second)  # a graceful leave: stopped before its shard's lease goes
    ports.remove(second)
    cluster.wait("it runs on the last one", lambda: ticks(cluster)[-1][1] == ports[0])
    time.sleep(0.3)
    # Never on two runners at once: the ticks are one run per runner, one after another.
    order = [port for _, port in ticks(cluster)]
    runs = [port for i, port in enumerate(order) if i == 0 or order[i - 1] != port]
    assert runs == [first, second, ports[0]]


def test_a_cron_job_runs_once_per_tick_across_a_runner_death(cluster: Cluster) -> None:
    ports = [4511, 4512, 4513]
    for port in ports:
        cluster.start(port)
    cluster.wait("three runners settle", lambda: cluster.settled(ports))

    def runs() -> list[tuple[str, int]]:
        path = cluster.out / "cron"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(at, int(port)) for at, port in (line.split() for line in lines)]

    cluster.wait("three ticks", lambda: len(runs()) >= 3, timeout=30)
    victim = runs()[-1][1]  # the runner of the latest tick dies
    cluster.kill(victim)
    killed_at = len(runs())
    cluster.wait("three ticks after the kill", lambda: len(runs()) >= killed_at + 3, timeout=30)
    ticks = [at for at, _ in runs()]
    repeated = {at for at in ticks if ticks.count(at) > 1}
    # A tick runs once; only one that was running on the killed runner may run again.
    assert len(repeated) <= 1, repeated
    for at in repeated:
        assert victim in {port for tick, port in runs() if tick == at}
    # Once the failover is over, every second has its tick, one after another.
    last = [datetime.fromisoformat(at) for at in ticks[-3:]]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(last)] == [1.0, 1.0]


def test_a_client_only_process_sends_and_holds_nothing(cluster: Cluster) -> None:
    requests, accounts = 600, 60
    ports = [4521, 4522]
    for port in ports:
        cluster.start(port)
    cluster.wait("two runners settle", lambda: cluster.settled(ports))
    cluster.start(0, requests, accounts)  # port 0: client-only
    cluster.wait("the client is up", lambda: cluster.view(0) is not None)
    (cluster.out / "go").touch()
    cluster.wait("the client is done", (cluster.out / "done-0").exists, timeout=120)
    check_deposits(cluster.replies(0), requests, accounts)
    runs = cluster.runs()
    assert {run.port for run in runs} == set(ports), "only the runners ran handlers"
    assert len(runs) == requests
    client = cluster.view(0) or {}
    assert client["shards"] == 0
    assert client["machine_id"] not in {(cluster.view(p) or {})["machine_id"] for p in ports}
    # It is in no ring: the runners still see two healthy runners.
    assert cluster.settled(ports)
    # Each runner's resident entities reach everyone with its heartbeats.
    addresses = {port: f"127.0.0.1:{port}" for port in ports}

    def counts_agree() -> bool:
        seen: object = (cluster.view(0) or {}).get("runner_entities")
        own = {addresses[p]: (cluster.view(p) or {}).get("entities") for p in ports}
        return isinstance(seen, dict) and all(seen.get(a) == n and n for a, n in own.items())

    cluster.wait("the client sees each runner's entities", counts_agree, timeout=20)


def test_persisted_requests_whose_runner_cannot_be_reached_go_by_storage(
    cluster: Cluster,
) -> None:
    # The runner listens on another port than it gives: the client's persisted requests,
    # saved claimed for a send that fails, are unclaimed, read by their owner from storage,
    # and answered through stored replies.
    requests, accounts = 300, 30
    runner = 4561
    cluster.env["CLUSTER_LISTEN_PORT"] = "4562"
    cluster.start(runner)
    cluster.wait("the runner settles", lambda: cluster.settled([runner]))
    cluster.start(0, requests, accounts)
    cluster.wait("the client is up", lambda: cluster.view(0) is not None)
    (cluster.out / "go").touch()
    cluster.wait("the client is done", (cluster.out / "done-0").exists, timeout=60)
    check_deposits(cluster.replies(0), requests, accounts)
    runs = cluster.runs()
    assert sorted(run.key for run in runs) == sorted(f"d{n}" for n in range(requests))


def test_a_sender_killed_before_sending_saved_requests_leaves_them_to_storage(
    cluster: Cluster, postgres_url: str
) -> None:
    # A client-only process SIGKILLs itself right after its persisted requests are saved
    # (claimed for 3 s here) and before they go to their runner: the runner, whose shards do
    # not move, takes them from storage once the claim is void, and runs each once.
    requests, accounts = 200, 20
    runner = 4571
    cluster.start(runner)
    cluster.wait("the runner settles", lambda: cluster.settled([runner]))
    cluster.env["CLUSTER_DIE_BEFORE_SEND"] = "1"
    cluster.start(0, requests, accounts)
    cluster.wait("the client is up", lambda: cluster.view(0) is not None)
    (cluster.out / "go").touch()
    client = cluster.processes.pop(0)
    assert client.wait(30) == -signal.SIGKILL
    database = postgres_url.rsplit("/", 1)[1]
    # (The runner's cron job saves requests of its own.)
    deposits = "plait_messages where entity_type = 'ClusterAccount'"
    saved = {
        line.split("/")[-1]
        for line in psql(f"select message_key from {deposits}", database).split()
    }
    assert saved, "the client died after saving"
    assert psql(f"select count(*) from {deposits} and processed", database).strip() == "0"

    def all_processed() -> bool:
        left = psql(f"select count(*) from {deposits} and not processed", database)
        return left.strip() == "0"

    waited = cluster.wait("the runner runs them", all_processed, timeout=30)
    runs = cluster.runs()
    assert sorted(run.key for run in runs) == sorted(saved)
    assert {run.port for run in runs} == {runner}
    # Once the claim is void (3 s), at the runner's next poll (1 s) after it.
    assert waited < 15, waited


def test_duplicates_sent_from_both_runners_get_the_one_stored_reply(cluster: Cluster) -> None:
    # Both runners send every deposit twice at once, the second 150 ms after the first, while
    # handlers take 300 ms: each key is stored once and its handler runs once, on its owner;
    # the copies sent to the owner over the transport, and those sent on the owner itself
    # while the first runner's copy runs there, all get that one reply.
    cluster.env["CLUSTER_HANDLER_SECONDS"] = "0.3"
    cluster.env["CLUSTER_COPIES"] = "2"
    requests, accounts = 200, 200
    ports = [4581, 4582]
    cluster.start(ports[0], requests, accounts)
    cluster.env["CLUSTER_SEND_DELAY"] = "0.15"
    cluster.start(ports[1], requests, accounts)
    cluster.wait("two runners settle", lambda: cluster.settled(ports))
    (cluster.out / "go").touch()
    for port in ports:
        cluster.wait("the runners are done", (cluster.out / f"done-{port}").exists, timeout=60)
    replies: dict[str, list[int]] = defaultdict(list)
    for port in ports:
        for line in (cluster.out / f"replies-{port}").read_text().splitlines():
            key, value = line.split()
            replies[key].append(int(value))
    assert set(replies) == {f"d{n}" for n in range(requests)}
    for key, values in replies.items():
        assert len(values) == 4, (key, values)
        # One deposit per account: its reply is the deposit itself.
        assert set(values) == {amount_of(int(key[1:]))}, (key, values)
    runs = cluster.runs()
    assert sorted(run.key for run in runs) == sorted(replies), "each handler ran once"
    assert len({run.port for run in runs}) == 2


def test_volatile_requests_cross_runners_and_survive_a_kill(cluster: Cluster) -> None:
    # A client-only process sends volatile requests: every one crosses to a runner over the
    # runners' transport. Handlers take up to 100 ms, so the kill catches many in flight.
    cluster.env["CLUSTER_VOLATILE"] = "1"
    cluster.env["CLUSTER_HANDLER_SECONDS"] = "0.1"
    requests, accounts = 2_000, 500
    survivor, other, victim = 4601, 4602, 4603
    ports = [survivor, other, victim]
    for port in ports:
        cluster.start(port)
    cluster.wait("three runners settle", lambda: cluster.settled(ports))
    cluster.start(0, requests, accounts)  # port 0: client-only
    cluster.wait("the client is up", lambda: cluster.view(0) is not None)
    (cluster.out / "go").touch()
    cluster.wait("requests begin", lambda: len(cluster.runs()) >= requests // 4)
    cluster.kill(victim)
    ports.remove(victim)
    # Then one leaves gracefully: what it still holds is answered Moved and sent again.
    cluster.wait("requests go on", lambda: len(cluster.runs()) >= requests // 2)
    cluster.stop(other)
    cluster.wait("the client is done", (cluster.out / "done-0").exists, timeout=120)

    replies = cluster.replies(0)
    assert set(replies) == {f"v{n}" for n in range(requests)}, "one reply per request"
    runs = cluster.runs()
    ran_on: dict[str, set[int]] = defaultdict(set)
    for run in runs:
        ran_on[run.key].add(run.port)
    for key, port in replies.items():
        assert port in ran_on[key], f"{key} answered by {port}, which did not run it"
    assert {run.port for run in runs} <= {survivor, other, victim}, "the client ran nothing"
    # Sent again only because the runner that had it died (at least once, as in Effect).
    for key in [key for key in ran_on if sum(run.key == key for run in runs) > 1]:
        assert victim in ran_on[key], f"{key} ran twice without a kill"
    assert {port for port in replies.values()} >= {survivor, other}


def test_a_caller_giving_up_interrupts_the_handler_on_another_runner(cluster: Cluster) -> None:
    sender, other = 4611, 4612
    cluster.env["CLUSTER_INTERRUPT"] = str(sender)
    cluster.start(sender, 0)
    cluster.start(other)
    cluster.wait("two runners settle", lambda: cluster.settled([sender, other]))
    (cluster.out / "go").touch()
    cluster.wait("the sender gave up", (cluster.out / f"done-{sender}").exists, timeout=30)
    entity = (cluster.out / "slow").read_text()
    cancelled = cluster.out / "cancelled"
    cluster.wait("the handler is cancelled", cancelled.exists, timeout=10)
    assert cancelled.read_text().split() == [entity, str(other)]


def test_a_volatile_caller_gets_runner_unavailable_when_its_runner_vanishes(
    cluster: Cluster,
) -> None:
    # The only runner dies while running the request: nobody can take it over, and after
    # twice the lease of retries the client-only caller gets RunnerUnavailable.
    cluster.env["CLUSTER_VANISH"] = "0"
    runner = 4641
    cluster.start(runner)
    cluster.wait("the runner settles", lambda: cluster.settled([runner]))
    cluster.start(0)
    cluster.wait("the client is up", lambda: cluster.view(0) is not None)
    (cluster.out / "go").touch()
    started = cluster.out / "started"
    cluster.wait("the handler runs", started.exists, timeout=30)
    cluster.kill(runner)
    killed = time.monotonic()
    error = cluster.out / "error-0"
    took = cluster.wait("the caller hears", error.exists, timeout=6 * LEASE_SECONDS)
    assert error.read_text() == "RunnerUnavailable"
    assert took >= 2 * LEASE_SECONDS - 1, f"gave up after {took:.1f} s, before the bound"
    assert time.monotonic() - killed < 6 * LEASE_SECONDS


def test_a_paused_runner_is_marked_unhealthy_by_ping_before_its_heartbeat_expires(
    cluster: Cluster,
) -> None:
    # A 30 s lease and heartbeat: only the ping health check (every second) can see the pause
    # sooner; the paused process's database session, and its session lock, stay alive.
    cluster.env["CLUSTER_LEASE_SECONDS"] = "30"
    cluster.env["CLUSTER_HEALTH_SECONDS"] = "1"
    first, paused = 4621, 4622
    cluster.start(first)
    cluster.start(paused)
    cluster.wait("two runners settle", lambda: cluster.settled([first, paused]))
    cluster.signal(paused, signal.SIGSTOP)
    try:
        seen = cluster.wait(
            "the paused runner leaves the ring",
            lambda: (cluster.view(first) or {}).get("healthy") == 1,
            timeout=20,
        )
        assert seen < 20
        assert (cluster.view(first) or {}).get("runners") == 2, "still registered"
    finally:
        cluster.signal(paused, signal.SIGCONT)
    cluster.wait(
        "it is marked healthy again once it answers",
        lambda: (cluster.view(first) or {}).get("healthy") == 2,
        timeout=20,
    )


def restart_postgres() -> bool:
    """Restarts the local PostgreSQL server (Debian's pg_ctlcluster, as root); False if it
    cannot be restarted here."""
    clusters = Path("/etc/postgresql")
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None or not clusters.is_dir():
        return False
    version = sorted(p.name for p in clusters.iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return True


def test_a_postgres_restart_mid_run_loses_nothing(cluster: Cluster) -> None:
    # Handlers take up to 200 ms, 30 deposits an account: the run outlasts the restart.
    cluster.env["CLUSTER_HANDLER_SECONDS"] = "0.2"
    requests, accounts = 3_000, 100
    sender, other = 4531, 4532
    cluster.start(sender, requests, accounts)
    cluster.start(other)
    ports = [sender, other]
    cluster.wait("two runners settle", lambda: cluster.settled(ports))
    (cluster.out / "go").touch()
    cluster.wait("deposits begin", lambda: len(cluster.runs()) >= requests // 10)
    if not restart_postgres():
        pytest.skip("PostgreSQL cannot be restarted here (needs root and pg_ctlcluster)")
    assert not (cluster.out / f"done-{sender}").exists(), "the run ended before the restart"
    cluster.wait("the sender is done", (cluster.out / f"done-{sender}").exists, timeout=180)
    cluster.wait("two runners settle again", lambda: cluster.settled(ports), timeout=60)
    check_deposits(cluster.replies(sender), requests, accounts)
    check_no_overlap(cluster.runs(), accounts)
