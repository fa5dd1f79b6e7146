"""Awaiting Rust tasks from asyncio.

Each event loop gets one `AsyncBridge`: Rust tasks started through it deliver their results to a
queue whose wake-up descriptor the loop watches. When it turns readable, the loop drains every
finished result in one call and resolves the matching futures. No Rust thread takes the GIL, and
a burst of completions costs one wake-up.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from typing import Any, cast

from plait._native import AsyncBridge, _after_fork_in_child

__all__ = ["LoopBridge", "call", "for_loop", "for_running_loop", "watch"]


class LoopBridge:
    """An event loop's `AsyncBridge` and the futures waiting on it.

    The loop keeps its bridge alive through the reader callback; the bridge's futures point
    back at the loop. Once the loop is closed that cycle is ordinary garbage, and collecting the
    bridge aborts whatever Rust tasks it still had.
    """

    __slots__ = ("__weakref__", "_callbacks", "_futures", "_loop", "_watches", "native")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.native = AsyncBridge()
        self._loop = weakref.ref(loop)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._callbacks: dict[int, Callable[[bool, Any], None]] = {}
        # Waits on something that may never happen (a lease lost): not work in flight.
        self._watches: dict[int, asyncio.Future[Any]] = {}
        loop.add_reader(self.native.fileno(), self._drain)

    def _drain(self) -> None:
        futures, callbacks = self._futures, self._callbacks
        for token, ok, value in self.native.drain():
            callback = callbacks.pop(token, None)
            if callback is not None:
                callback(ok, value)
                continue
            future = futures.pop(token, None)
            if future is None:
                future = self._watches.pop(token, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(cast(BaseException, value))

    def on_result(self, token: int, callback: Callable[[bool, Any], None]) -> None:
        """Calls `callback(ok, value)` on the loop thread when the task behind `token` ends.

        For callers that must hear of the result whatever happens to the code that started
        the task (a journal commit serves many runs): nothing cancels the task.
        """
        self._callbacks[token] = callback

    async def wait(self, token: int, *, watch: bool = False) -> Any:
        """The result of the task behind `token`.

        However the wait ends early (cancelled, or the coroutine closed), the task is stopped.
        `watch`: the task waits for an event that may never come (a lease lost), so it is not
        counted as work in flight.
        """
        future = asyncio.get_running_loop().create_future()
        waiting = self._watches if watch else self._futures
        waiting[token] = future
        try:
            return await future
        finally:
            # Still registered means no result was delivered: nobody will take it now.
            if waiting.pop(token, None) is not None:
                self.native.cancel(token)


# Weak values: only the loop keeps its bridge alive. Keys are loop ids, checked against the
# bridge's weak reference to its loop, since an id can be reused once a loop is gone.
_bridges: weakref.WeakValueDictionary[int, LoopBridge] = weakref.WeakValueDictionary()


def _forget_parent_state() -> None:
    # A forked child has the parent's memory but not its Rust threads. Mark the parent's
    # runtime first, so the bridges dropped next know not to touch it.
    _after_fork_in_child()
    _bridges.clear()


os.register_at_fork(after_in_child=_forget_parent_state)


def for_running_loop() -> LoopBridge:
    """The running loop's bridge, made on first use."""
    return for_loop(asyncio.get_running_loop())


def for_loop(loop: asyncio.AbstractEventLoop) -> LoopBridge:
    """`loop`'s bridge, made on first use (call it on the loop's thread)."""
    bridge = _bridges.get(id(loop))
    if bridge is None or bridge._loop() is not loop:
        bridge = _bridges[id(loop)] = LoopBridge(loop)
    return bridge


async def call(start: Callable[[AsyncBridge], int]) -> Any:
    """Starts a Rust task with `start(bridge)` and waits for its result."""
    bridge = for_running_loop()
    return await bridge.wait(start(bridge.native))


async def watch(start: Callable[[AsyncBridge], int]) -> Any:
    """As `call`, for a task that waits for an event that may never come (not work in flight)."""
    bridge = for_running_loop()
    return await bridge.wait(start(bridge.native), watch=True)
