"""Entities next to the workflows: per-channel message sequence numbers for a chat backend.

A chat backend gives every message of a channel its place in the channel: a sequence number,
assigned once even when a client retries the send. Each channel is an entity instance
(`ChannelLog`, id = the channel id): it handles one request at a time, so numbers never clash,
and its counter is durable state, saved in the same transaction as each reply. The demo sends
messages to three channels at once, retries one, restarts the engine on the same SQLite file,
and shows that the numbering goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from pydantic import BaseModel

import plait


class Post(BaseModel):
    client_message_id: str  # the client's own id: a retried send carries the same one
    author: str
    text: str


class Sequence(BaseModel):
    last: int = 0
    by_author: dict[str, int] = {}


ChannelLog = plait.Entity("ChannelLog", state=Sequence)


@ChannelLog.rpc(persisted=True, primary_key=lambda post: post.client_message_id)
async def append(ctx: plait.EntityContext[Sequence], post: Post) -> int:
    ctx.state.last += 1
    ctx.state.by_author[post.author] = ctx.state.by_author.get(post.author, 0) + 1
    return ctx.state.last


@ChannelLog.rpc()
async def stats(ctx: plait.EntityContext[Sequence]) -> Sequence:
    return ctx.state


async def first_run(db: str) -> None:
    async with plait.Engine.sqlite(db):
        posts = [
            (channel, Post(client_message_id=f"{channel}-{n}", author=author, text="hi"))
            for n, author in enumerate(["ada", "grace", "ada"])
            for channel in ("general", "random", "design")
        ]
        numbers = await asyncio.gather(*(append.call(ch, post) for ch, post in posts))
        for (channel, post), number in zip(posts, numbers, strict=True):
            print(f"#{channel} {post.client_message_id} -> {number}")
        retry = posts[0]
        print(f"retried {retry[1].client_message_id} -> {await append.call(*retry)} (same number)")


async def after_restart(db: str) -> None:
    async with plait.Engine.sqlite(db):
        log = ChannelLog.client("general")
        post = Post(client_message_id="general-after", author="grace", text="back")
        print(f"after the restart: #general general-after -> {await log.append(post)}")
        print(f"#general stats: {await log.stats()}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "chat.db")
        asyncio.run(first_run(db))
        asyncio.run(after_restart(db))


if __name__ == "__main__":
    main()
