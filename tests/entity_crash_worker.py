"""A worker process for the entity crash test: persisted deposits into accounts with state.

Usage: `python -m tests.entity_crash_worker <database url> <side-effect file> <replies file>
<requests> <accounts>`

Sends (or, after a crash, sends again: the same primary keys) `requests` persisted deposits over
`accounts` entity ids, all in flight at once, and writes `<key> <reply>` per reply. Each handler
run appends `<key>` to the side-effect file before it returns, so a run repeated after a kill
shows up as a repeated line. At the end it writes `balance <account> <total> <deposits>` for
every account, read through a volatile RPC from the durable state.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from pydantic import BaseModel

import plait

SIDE_EFFECTS = ""


def record(line: str) -> None:
    """Appends one line with a single `write` (O_APPEND): whole lines even under SIGKILL."""
    fd = os.open(SIDE_EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Deposit(BaseModel):
    key: str
    amount: int


class Ledger(BaseModel):
    total: int = 0
    deposits: int = 0


Account = plait.Entity("CrashAccount", state=Ledger)


@Account.rpc(persisted=True, primary_key=lambda d: d.key)
async def deposit(ctx: plait.EntityContext[Ledger], d: Deposit) -> int:
    await asyncio.sleep(random.uniform(0, 0.002))
    record(d.key)
    ctx.state.total += d.amount
    ctx.state.deposits += 1
    return ctx.state.total


@Account.rpc()
async def ledger(ctx: plait.EntityContext[Ledger]) -> Ledger:
    return ctx.state


def amount_of(n: int) -> int:
    return n % 7 + 1


async def main(url: str, replies: str, requests: int, accounts: int) -> None:
    async with plait.Engine.url(url):
        sends = [
            deposit.call(f"acct-{n % accounts}", Deposit(key=f"d{n}", amount=amount_of(n)))
            for n in range(requests)
        ]
        answered = await asyncio.gather(*sends)
        out = [f"d{n} {value}" for n, value in enumerate(answered)]
        for a in range(accounts):
            state = await ledger.call(f"acct-{a}", None)
            out.append(f"balance acct-{a} {state.total} {state.deposits}")
    append_lines(replies, out)
    print("done")


def append_lines(path: str, lines: list[str]) -> None:
    with open(path, "a") as out:
        out.writelines(f"{line}\n" for line in lines)


if __name__ == "__main__":
    url, SIDE_EFFECTS, replies_path = sys.argv[1], sys.argv[2], sys.argv[3]
    asyncio.run(main(url, replies_path, int(sys.argv[4]), int(sys.argv[5])))
