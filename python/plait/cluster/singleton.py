"""Singletons: a task that runs on one runner of the cluster at a time (Effect's `Singleton`).

A singleton's name hashes to a shard of its group; it runs on the runner that holds that
shard's lease, is stopped before the lease is released when the shard moves, and starts on the
new owner. On a single engine (a SQLite file, memory, one PostgreSQL engine) it runs there.

Example:
    ```python
    async def sweep_expired_sessions() -> None:
        while True:
            await delete_expired_sessions()
            await asyncio.sleep(60)

    plait.Singleton("session-sweeper", sweep_expired_sessions)
    ```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from plait._native import shard_id
from plait.engine import Engine, current_engine
from plait.errors import InvalidArgumentError

__all__ = ["Singleton", "Singletons"]

_log = logging.getLogger("plait.cluster")
_registered: dict[str, Singleton] = {}


class Singleton:
    """Registers `run` to run on exactly one runner of the cluster at a time.

    `run` is started on the runner holding shard `shard_of(name)` of `shard_group`, and
    cancelled when that runner lets the shard go (it then starts on the shard's new owner).
    When `run` returns, the singleton is done until its shard moves; when it raises, the error
    is logged (`plait.cluster`) and it is not restarted until its shard moves.

    Args:
        name: Unique among the singletons of the process.
        run: The coroutine function to run.
        shard_group: The shard group whose shard it lives on.

    Raises:
        InvalidArgumentError: A singleton of this name is registered already.
    """

    def __init__(
        self, name: str, run: Callable[[], Awaitable[None]], *, shard_group: str = "default"
    ) -> None:
        if not name:
            msg = "a singleton needs a non-empty name"
            raise InvalidArgumentError(msg)
        if name in _registered:
            msg = f"a singleton named {name!r} is registered already"
            raise InvalidArgumentError(msg)
        self.name, self.run, self.shard_group = name, run, shard_group
        _registered[name] = self

    def shard(self, shards_per_group: int) -> str:
        """The shard it lives on, `"group:id"` (Effect's `getShardId(name, group)`)."""
        return f"{self.shard_group}:{shard_id(self.name, shards_per_group)}"

    def unregister(self) -> None:
        """Forgets it: engines started afterwards do not run it (one running is not stopped)."""
        if _registered.get(self.name) is self:
            del _registered[self.name]

    def __repr__(self) -> str:
        return f"Singleton({self.name!r}, shard_group={self.shard_group!r})"


class Singletons:
    """The singletons one engine runs: started for the shards it holds, stopped as they go."""

    def __init__(self, engine: Engine, shards_per_group: int) -> None:
        self.engine = engine
        self.shards_per_group = shards_per_group
        self.tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}

    def running(self) -> list[str]:
        """The names of the singletons running here now."""
        return sorted(name for name, (_, task) in self.tasks.items() if not task.done())

    def sync(self, held: set[str] | None) -> None:
        """Starts the singletons of the shards `held` (None: all); cancels those not held.

        A singleton already running here is left as it is.
        """
        for singleton in list(_registered.values()):
            shard = singleton.shard(self.shards_per_group)
            if singleton.name in self.tasks:
                continue
            if held is None or shard in held:
                task = asyncio.get_running_loop().create_task(
                    _run(singleton, self.engine), name=f"plait singleton {singleton.name}"
                )
                self.tasks[singleton.name] = (shard, task)
        if held is not None:
            for name, (shard, task) in list(self.tasks.items()):
                if shard not in held:
                    task.cancel()
                    del self.tasks[name]

    async def stop(self, shards: set[str] | None) -> None:
        """Cancels the singletons of `shards` (None: all) and waits until they stopped."""
        stopped = []
        for name, (shard, task) in list(self.tasks.items()):
            if shards is None or shard in shards:
                task.cancel()
                stopped.append(task)
                del self.tasks[name]
        for task in stopped:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _run(singleton: Singleton, engine: Engine) -> None:
    current_engine.set(engine)  # the task's own context: its RPCs go to this engine
    try:
        await singleton.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("singleton %r failed", singleton.name, extra={"singleton": singleton.name})
