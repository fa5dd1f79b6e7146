"""Workflows by name, for the runs that a deferred, a timer or recovery starts."""

from __future__ import annotations

from plait._definitions import Definitions, DefinitionSite
from plait.engine.specs import WorkflowSpec

__all__ = ["lookup", "register"]

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
