"""Cron jobs that run once per tick across the whole cluster (Effect's `ClusterCron`).

Each tick is a persisted request to the entity `ClusterCron/<name>`, addressed to an entity id
that is the tick's instant (ISO 8601, UTC) with the primary key `""`: whichever runner sends it,
however often, it is stored once and runs once. It is delivered at its instant; its handler runs
`execute`, then schedules the next tick the same way. A singleton of the same name sends the
first tick when it starts (again after its shard moves: the same instant is the same request).
Cron expressions are read by `croniter`, with an optional seconds field first, as Effect's.

Example:
    ```python
    async def poll_feeds(tick: datetime) -> None:
        ...

    plait.ClusterCron("poll-feeds", "*/5 * * * *", poll_feeds)
    ```
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from croniter import CroniterBadCronError, croniter
from pydantic import BaseModel

from plait.cluster.entity import Entity
from plait.cluster.runtime import EntityContext
from plait.cluster.singleton import Singleton
from plait.errors import InvalidArgumentError

__all__ = ["ClusterCron"]

_log = logging.getLogger("plait.cluster")


class CronRun(BaseModel):
    """One tick of a cron job: the instant it is for."""

    date_time: datetime


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClusterCron:
    """Runs `execute(tick)` on one runner of the cluster at each tick of `cron`.

    Args:
        name: Unique among the cron jobs (it names an entity and a singleton).
        cron: A cron expression: five fields, or six with seconds first.
        execute: The coroutine function run at each tick, given the tick's instant (UTC). A
            failure is logged; the next tick is scheduled all the same.
        calculate_next_run_from_previous: Schedule each tick from the previous one (missed
            ticks are caught up, one after another) instead of from now.
        skip_if_older_than: A tick delivered later than this after its instant is skipped.

    Raises:
        InvalidArgumentError: The expression does not parse, or the name is taken.
    """

    def __init__(
        self,
        name: str,
        cron: str,
        execute: Callable[[datetime], Awaitable[None]],
        *,
        calculate_next_run_from_previous: bool = False,
        skip_if_older_than: timedelta = timedelta(days=1),
    ) -> None:
        self.cron = cron
        self.execute = execute
        self.calculate_next_run_from_previous = calculate_next_run_from_previous
        self.skip_if_older_than = skip_if_older_than
        self.next_after(datetime.now(UTC))  # refuses a bad expression now
        self.entity: Entity[None] = Entity(f"ClusterCron/{name}")
        self.rpc = self.entity.rpc(name="run", persisted=True, primary_key=lambda _: "")(self._run)
        self.singleton = Singleton(f"ClusterCron/{name}", self._start)

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after `instant`, in UTC."""
        six = len(self.cron.split()) == 6
        try:
            ticks = croniter(self.cron, instant.astimezone(UTC), second_at_beginning=six)
            found: datetime = ticks.get_next(datetime)
        except (CroniterBadCronError, ValueError, KeyError) as err:
            msg = f"cron expression {self.cron!r} does not parse: {err}"
            raise InvalidArgumentError(msg) from None
        return found.astimezone(UTC)

    async def _schedule(self, tick: datetime) -> None:
        await self.rpc.call(_iso(tick), CronRun(date_time=tick), discard=True, deliver_at=tick)

    async def _start(self) -> None:
        await self._schedule(self.next_after(datetime.now(UTC)))

    async def _run(self, ctx: EntityContext[None], tick: CronRun) -> None:
        now = datetime.now(UTC)
        if tick.date_time >= now - self.skip_if_older_than:
            try:
                await self.execute(tick.date_time)
            except Exception:
                _log.exception("cron job %r failed at %s", self.entity.name, _iso(tick.date_time))
        # Never the same tick again, even when it was delivered a moment early.
        base = tick.date_time if self.calculate_next_run_from_previous else max(now, tick.date_time)
        await self._schedule(self.next_after(base))
