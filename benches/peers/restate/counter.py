"""Restate's side of plait's entity benchmark (benches/entities.py): the counter as a Restate
virtual object. Its count is the object's durable state (Restate journals the call and the new
state before it answers). Served by hypercorn over h2c; benches/entities.py installs and runs it
under /tmp."""

import restate

counter = restate.VirtualObject("BenchCounter")


@counter.handler()
async def increment(ctx: restate.ObjectContext, by: int) -> int:
    value = (await ctx.get("count", type_hint=int) or 0) + by
    ctx.set("count", value)
    return value


app = restate.app(services=[counter])
