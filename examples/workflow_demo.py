"""Durable workflows of a chat backend, on plait's embedded SQLite engine.

Hazel Chat's message-notification workflow (mute and presence rules, notifications that are
safe to write twice) over a chat database; a history import whose worker process is killed
with SIGKILL halfway and resumed by another process without redoing a step; an invitation that
waits a week for a webhook; and a failing workflow whose compensations run.
Run with `./dev demo`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

import plait
from plait.testing import VirtualClock

SCHEMA = """
create table channel_members (id text primary key, channel_id text, user_id text,
    is_muted integer default 0, notification_count integer default 0);
create table user_presence_status (user_id text primary key, status text,
    active_channel_id text, suppress_notifications integer default 0);
create table notifications (id integer primary key, member_id text, resource_id text,
    unique (member_id, resource_id));
"""
db = sqlite3.connect(":memory:", check_same_thread=False)
db.executescript(SCHEMA)
db.executemany(
    "insert into channel_members (id, channel_id, user_id, is_muted) values (?, 'general', ?, ?)",
    [("m-ada", "ada", 0), ("m-bob", "bob", 0), ("m-cy", "cy", 1), ("m-dee", "dee", 0)],
)
# Bob is online and looking at the channel: he needs no notification.
db.execute("insert into user_presence_status values ('bob', 'online', 'general', 0)")

MENTION = re.compile(r"@\[(userId|directive):([^\]]+)\]")


class NewMessage(BaseModel):
    message_id: str
    channel_id: str
    author_id: str
    channel_type: str
    content: str


calls = {"GetChannelMembers": 0, "CreateNotifications": 0}


@plait.activity(name="GetChannelMembers")
def get_channel_members(msg: NewMessage, targets: list[str] | None) -> list[str]:
    """Unmuted members other than the author, minus those reading the channel right now."""
    calls["GetChannelMembers"] += 1
    rows = db.execute(
        """select m.id, m.user_id from channel_members m
           left join user_presence_status p on p.user_id = m.user_id
           where m.channel_id = ? and m.is_muted = 0 and m.user_id != ?
             and (p.user_id is null or (p.suppress_notifications = 0 and
                  (p.active_channel_id is null or p.active_channel_id != m.channel_id
                   or p.status != 'online')))""",
        (msg.channel_id, msg.author_id),
    ).fetchall()
    return [member for member, user in rows if targets is None or user in targets]


@plait.activity(name="CreateNotifications")
def create_notifications(msg: NewMessage, members: list[str]) -> int:
    """Insert-if-absent, so a retried step never notifies anyone twice."""
    calls["CreateNotifications"] += 1
    with db:
        inserted = [
            member
            for member in members
            if db.execute(
                "insert into notifications (member_id, resource_id) values (?, ?) "
                "on conflict do nothing",
                (member, msg.message_id),
            ).rowcount
        ]
        db.executemany(
            "update channel_members set notification_count = notification_count + 1 where id = ?",
            [(m,) for m in inserted],
        )
    return len(inserted)


MessageNotification = plait.Workflow(
    "MessageNotificationWorkflow",
    payload=NewMessage,
    success=int,
    idempotency_key=lambda msg: msg.message_id,
)


@MessageNotification.implement
async def notify(msg: NewMessage, execution_id: str) -> int:
    mentions = MENTION.findall(msg.content)
    notify_all = msg.channel_type in ("direct", "single") or any(
        kind == "directive" and value in ("channel", "here") for kind, value in mentions
    )
    targets = None if notify_all else [v for kind, v in mentions if kind == "userId"]
    members = await get_channel_members(msg, targets)
    if not members:
        return 0
    notified: int = await create_notifications(msg, members)
    return notified


async def notifications() -> None:
    print("== MessageNotificationWorkflow (Hazel) on SQLite")
    msg = NewMessage(
        message_id="msg-1",
        channel_id="general",
        author_id="ada",
        channel_type="public",
        content="release at 5 @[directive:channel]",
    )
    notified = await MessageNotification.execute(msg)
    print(f"@channel from ada notified {notified} member(s): dee (bob is watching, cy muted)")
    again = await MessageNotification.execute(msg)
    print(
        f"the same message again returns the stored result {again} without running a step: "
        f"steps ran {calls}"
    )
    execution_id = MessageNotification.execution_id(msg)
    print(f"execution id {execution_id}: {await MessageNotification.poll(execution_id)}")
    try:
        await MessageNotification.execute({"message_id": "msg-2", "channel_id": "general"})
    except plait.PayloadError as err:
        print(f"a bad payload starts nothing: {len(err.errors)} missing fields")


class Invite(BaseModel):
    invite_id: str
    email: str


InviteAccepted = plait.DurableDeferred("InviteAccepted", success=str)
InviteMember = plait.Workflow("InviteMember", payload=Invite, success=str)


@InviteMember.implement
async def invite_member(invite: Invite, execution_id: str) -> str:
    async def expire() -> str:
        await plait.DurableClock.sleep("InviteExpiry", timedelta(days=7))
        return "expired"

    outcome: str = await plait.DurableDeferred.race_all(
        "AcceptOrExpire", [InviteAccepted, expire()], success=str
    )
    return outcome


async def invitations() -> None:
    print("\n== An invitation waits a week for a webhook (virtual clock)")
    clock = VirtualClock()
    async with plait.Engine.memory(clock=clock):
        accepted = Invite(invite_id="inv-1", email="eve@example.org")
        ignored = Invite(invite_id="inv-2", email="fay@example.org")
        first = await InviteMember.execute(accepted, discard=True)
        second = await InviteMember.execute(ignored, discard=True)
        await clock.advance(timedelta(hours=1))
        print(f"after an hour both are suspended: {await InviteMember.poll(first)}")
        # What a webhook handler does with the token it was handed:
        token = InviteAccepted.token_from_payload(InviteMember, accepted)
        await InviteAccepted.succeed(token, "accepted by eve")
        print(f"inv-1 after the webhook: {await InviteMember.execute(accepted)!r}")
        await clock.advance(timedelta(days=7))
        print(f"inv-2 after seven virtual days: {await InviteMember.execute(ignored)!r}")
        print(f"  (ids {first[:8]}..., {second[:8]}...)")


class PaymentDeclined(plait.TaggedError):
    reason: str


undone: list[str] = []

Upgrade = plait.Workflow(
    "UpgradeWorkspace", payload={"workspace": str}, success=str, error=PaymentDeclined
)


@Upgrade.implement
async def upgrade(payload: BaseModel, execution_id: str) -> str:
    async def undo_seats(seats: str) -> None:
        undone.append(seats)

    seats = await plait.with_compensation(
        plait.Activity("ReserveSeats", success=str, execute=lambda: "50 seats"), undo_seats
    )
    raise PaymentDeclined(reason=f"card expired while reserving {seats}")


async def compensation() -> None:
    print("\n== A failing workflow undoes its steps")
    try:
        await Upgrade.execute({"workspace": "acme"})
    except PaymentDeclined as err:
        print(f"PaymentDeclined(reason={err.reason!r}); compensations ran: {undone}")


@plait.activity(name="ImportPage")
def import_page(progress: str, page: int) -> int:
    """Imports one page of a channel's history (here: notes which process did it)."""
    time.sleep(0.3)  # a sync body: it runs in a worker thread, off the event loop
    with Path(progress).open("a") as out:
        out.write(f"{page} {os.getpid()}\n")
    return 100


@plait.workflow(name="ImportHistory", idempotency_key=lambda p: p.channel_id)
async def import_history(channel_id: str, progress: str) -> int:
    imported = 0
    for page in range(1, 6):
        imported += await import_page(progress, page)  # ImportPage, ImportPage#2, ...
    return imported


async def run_import(db: str, progress: str) -> int:
    async with plait.Engine.sqlite(db):
        return await import_history(channel_id="general", progress=progress)


def crash_and_resume(workdir: Path) -> None:
    print("\n== A worker killed with SIGKILL halfway; another process resumes it")
    db, progress = workdir / "import.db", workdir / "progress"
    progress.touch()
    worker = subprocess.Popen([sys.executable, __file__, "--import", str(db), str(progress)])
    while len(progress.read_text().splitlines()) < 2:
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    print(f"worker {worker.pid} killed after pages {_pages(progress)}")
    total = asyncio.run(run_import(str(db), str(progress)))
    me = os.getpid()
    resumed = [page for page, pid in _progress(progress) if pid == me]
    print(f"process {me} resumed it: pages {resumed}, {total} messages imported")
    twice = sorted(p for p, n in _counts(progress).items() if n > 1)
    # A page whose side effect happened but whose result the kill kept out of the journal runs
    # again: steps are at least once, results exactly once.
    print(f"pages done twice: {twice} (at most the page in flight when the kill landed)")


def _progress(path: Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def _pages(path: Path) -> list[int]:
    return [page for page, _ in _progress(path)]


def _counts(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for page in _pages(path):
        counts[page] = counts.get(page, 0) + 1
    return counts


async def main(workdir: Path) -> None:
    async with plait.Engine.sqlite(workdir / "plait.db"):
        await notifications()
        await compensation()
    await invitations()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--import"]:
        asyncio.run(run_import(sys.argv[2], sys.argv[3]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp)))
            crash_and_resume(Path(tmp))
