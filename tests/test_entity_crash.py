"""Persisted entity requests survive SIGKILL: a process with 1,000 requests in flight is killed.

A new process sends the same requests again (the same primary keys, as a caller that
reconnects). Then every request has exactly one final reply, a handler ran again only for
requests that were in flight at the kill, and every deposit changed the durable state of its
account exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REQUESTS = 1_000
ACCOUNTS = 100
ROOT = Path(__file__).resolve().parent.parent


def start_worker(url: str, side_effects: Path, replies: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.entity_crash_worker",
            url,
            str(side_effects),
            str(replies),
            str(REQUESTS),
            str(ACCOUNTS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_persisted_requests_survive_sigkill_with_exactly_once_state(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{backend}_url")
    side_effects, replies = tmp_path / "side_effects", tmp_path / "replies"
    worker = start_worker(url, side_effects, replies)
    deadline = time.monotonic() + 60
    # Killed with part of the requests handled: the rest in flight, saved or not yet.
    while worker.poll() is None and len(lines(side_effects)) < REQUESTS // 3:
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.002)
    assert worker.poll() is None, "the worker finished before the kill; raise REQUESTS"
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=30)
    before = Counter(lines(side_effects))
    assert not lines(replies)

    final = start_worker(url, side_effects, replies)
    out, err = final.communicate(timeout=180)
    assert final.returncode == 0, err
    assert "done" in out

    runs = Counter(lines(side_effects))
    assert set(runs) == {f"d{n}" for n in range(REQUESTS)}, "a request never ran"
    again = {key for key, count in runs.items() if count > 1}
    # Only requests whose run had started before the kill ran again, and at most once more.
    assert again <= set(before)
    assert all(count <= 2 for count in runs.values())
    # In flight at the kill: at most one per account (one request at a time per instance).
    assert len(again) <= ACCOUNTS

    answered: dict[str, set[int]] = {}
    balances: dict[str, tuple[int, int]] = {}
    for line in lines(replies):
        parts = line.split()
        if parts[0] == "balance":
            balances[parts[1]] = (int(parts[2]), int(parts[3]))
        else:
            answered.setdefault(parts[0], set()).add(int(parts[1]))
    assert sorted(answered, key=lambda k: int(k[1:])) == [f"d{n}" for n in range(REQUESTS)]
    assert all(len(values) == 1 for values in answered.values()), "two replies for a request"
    for a in range(ACCOUNTS):
        keys = [n for n in range(REQUESTS) if n % ACCOUNTS == a]
        expected = (sum(n % 7 + 1 for n in keys), len(keys))
        assert balances[f"acct-{a}"] == expected, f"acct-{a}: state applied other than once"
    # Each account's replies are its running totals: distinct and within its total.
    for a in range(ACCOUNTS):
        totals = sorted(next(iter(answered[f"d{n}"])) for n in range(a, REQUESTS, ACCOUNTS))
        assert len(set(totals)) == len(totals)
        assert totals[-1] == balances[f"acct-{a}"][0]
