"""A process running durable queue items, for `tests/test_durable_queue.py`'s crash test.

`python -m tests.dq_crash_worker <database url> <effects file> <workflows> <start|resume>`:
starts `<workflows>` executions of `dq_crash_Order` (`start` only), each processing one item of
the queue `dq_crash_Charges`, and runs a worker on the queue (`resume`: until every execution
has its result, which it prints, one `result <result>` line each). The handler appends
`start <key>` to the effects file before its work and `done <key>` after it, each line on disk
before it goes on (flushed and fsynced), so that a SIGKILL leaves an exact record of which
items ran, and which were cut short. It prints `ready` once the executions are started.
"""

from __future__ import annotations

import asyncio
import os
import sys

from pydantic import BaseModel

import plait

#: Short, so that the process started after a SIGKILL takes the items cut short soon.
CLAIM_TIMEOUT = 1.5


class Charge(BaseModel):
    order: str
    cents: int


Charges = plait.DurableQueue(
    "dq_crash_Charges", payload=Charge, success=str, idempotency_key=lambda c: c.order
)


class OrderPayload(BaseModel):
    order: str


Order = plait.Workflow(
    "dq_crash_Order", payload=OrderPayload, success=str, idempotency_key=lambda p: p.order
)


@Order.implement
async def order(payload: OrderPayload, execution_id: str) -> str:
    receipt = await Charges.process(Charge(order=payload.order, cents=100))
    return f"{payload.order}:{receipt}"


def effect(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


async def main(url: str, effects: str, workflows: int, mode: str) -> None:
    async def charge(c: Charge) -> str:
        effect(effects, f"start {c.order}")
        # One item is still running for sure when the test kills the first process.
        await asyncio.sleep(60 if mode == "start" and c.order == "o3" else 0.02)
        effect(effects, f"done {c.order}")
        return f"receipt-{c.order}"

    async with plait.Engine.url(url):
        if mode == "start":
            for n in range(workflows):
                await Order.execute({"order": f"o{n}"}, discard=True)
        print("ready", flush=True)
        async with Charges.worker(charge, concurrency=4, claim_timeout=CLAIM_TIMEOUT):
            if mode == "start":
                await asyncio.Event().wait()  # until killed
            results = await asyncio.gather(
                *(Order.execute({"order": f"o{n}"}) for n in range(workflows))
            )
            for result in results:
                print(f"result {result}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
