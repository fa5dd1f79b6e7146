"""Workflows by name, and the hooks of what else runs on an engine.

Workflows are found by name for the runs that a deferred, a timer or recovery starts; what runs
beside them (the entities of `plait.cluster`) attaches to each engine when it starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plait._definitions import Definitions, DefinitionSite
from plait.engine.specs import WorkflowSpec

__all__ = ["lookup", "on_engine_start", "register", "start_hooks"]

_start_hooks: list[Callable[[Any], None]] = []

_registry: Definitions[WorkflowSpec] = Definitions("workflow", keep_latest=True)


def register(workflow: WorkflowSpec, site: DefinitionSite) -> None:
    """Makes `workflow`, defined at `site`, findable by name for runs a deferred or timer starts.

    Raises:
        DuplicateNameError: Another live workflow, defined elsewhere, has the name.
    """
    _registry.claim(workflow.name, workflow, site)


def lookup(name: str) -> WorkflowSpec | None:
    """The workflow registered under `name`, if any."""
    return _registry.get(name)


def on_engine_start(hook: Callable[[Any], None]) -> None:
    """Calls `hook(engine)` whenever an engine starts (once its work source runs).

    How a part above the engine (the entities of `plait.cluster`) attaches to each engine
    without the engine importing it.
    """
    if hook not in _start_hooks:
        _start_hooks.append(hook)


def start_hooks() -> list[Callable[[Any], None]]:
    """The hooks registered with `on_engine_start`, in order."""
    return list(_start_hooks)
