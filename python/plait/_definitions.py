"""Names that one live definition holds at a time: workflows and `@activity` functions.

A workflow's name is how the journal, tokens and timers find its code; a decorated activity's
name is its step's key in the journal. Two live definitions under one name would silently take
each other's executions or results, so the second one is refused.

Definitions are held weakly: one nothing else references (a test's, or a factory's whose
result was dropped) frees its name. Defining again at the same place (same file and line, as a
factory called twice or a test run once per backend does) replaces the earlier definition.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Generic, TypeVar

from plait.errors import DuplicateNameError

__all__ = ["DefinitionSite", "Definitions", "caller_site", "function_site"]

D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class DefinitionSite:
    """Where a definition was made: its source file and line, and its module for messages."""

    file: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}"


def _site_of(frame: FrameType) -> DefinitionSite:
    module = frame.f_globals.get("__name__")
    name = module if isinstance(module, str) else frame.f_code.co_filename
    return DefinitionSite(frame.f_code.co_filename, frame.f_lineno, name)


_PLAIT_DIR = os.path.dirname(__file__) + os.sep


def _in_plait(frame: FrameType) -> bool:
    # By file, not module name: a doctest's code runs with its plait module's globals.
    return frame.f_code.co_filename.startswith(_PLAIT_DIR)


def caller_site(made: object) -> DefinitionSite:
    """The line outside plait that is making `made`.

    Frames of plait itself are skipped, and so are the `__init__`s of `made`'s class and its
    bases (a subclass's calling ours), so that the site is where the user's code builds it.
    """
    inits = {
        code
        for cls in type(made).__mro__
        if (code := getattr(cls.__dict__.get("__init__"), "__code__", None)) is not None
    }
    frame = sys._getframe(1)
    while frame.f_back is not None and (_in_plait(frame) or frame.f_code in inits):
        frame = frame.f_back
    return _site_of(frame)


def function_site(fn: Callable[..., object], made: object) -> DefinitionSite:
    """Where `fn` is defined; for a callable with no code of its own, where `made` is made."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return caller_site(made)
    module = getattr(fn, "__module__", None)
    name = module if isinstance(module, str) else code.co_filename
    return DefinitionSite(code.co_filename, code.co_firstlineno, name)


class Definitions(Generic[D]):
    """Definitions of one kind by name, at most one live definition per name.

    Args:
        kind: What they are, for messages ("workflow", "activity").
        keep_latest: Also hold the latest definition of each name strongly, so that `get`
            finds it even when its owner dropped it (a workflow registered only for the
            engine to run). It does not count as a reference when names clash.
    """

    def __init__(self, kind: str, *, keep_latest: bool) -> None:
        self._kind = kind
        self._keep_latest = keep_latest
        self._live: weakref.WeakValueDictionary[str, D] = weakref.WeakValueDictionary()
        self._latest: dict[str, D] = {}
        self._sites: dict[str, DefinitionSite] = {}
        # Reentrant: a finalizer run by gc.collect() may itself define something.
        self._lock = threading.RLock()

    def get(self, name: str) -> D | None:
        """The definition holding `name`, if any."""
        found = self._latest.get(name)
        return found if found is not None else self._live.get(name)

    def values(self) -> list[D]:
        """Every definition holding a name, by name."""
        with self._lock:
            names = sorted(set(self._live.keys()) | set(self._latest))
        return [found for name in names if (found := self.get(name)) is not None]

    def claim(self, name: str, definition: D, site: DefinitionSite) -> None:
        """Makes `definition`, made at `site`, the one holding `name`.

        Raises:
            DuplicateNameError: Another definition, made elsewhere, holds the name and is
                still referenced from outside plait.
        """
        with self._lock:
            held = self._live.get(name)
            if held is not None and held is not definition and self._sites[name] != site:
                held_site = self._sites[name]
                # Only a definition something else still references clashes: drop our own
                # hold and collect the unreachable ones (a finished test's, say) first.
                self._latest.pop(name, None)
                still_held = weakref.ref(held)
                del held
                gc.collect()
                held = still_held()
                if held is not None:
                    if self._keep_latest:
                        self._latest[name] = held
                    raise DuplicateNameError(self._kind, name, str(held_site), str(site))
            self._live[name] = definition
            self._sites[name] = site
            if self._keep_latest:
                self._latest[name] = definition
