"""The workflows, deferreds and entities a user's module defines, for `plait serve`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from plait.cluster import Entity
from plait.deferred import DurableDeferred
from plait.http.errors import NotFoundError
from plait.workflow import Workflow

__all__ = ["Definitions", "load_definitions"]


@dataclass(frozen=True)
class Definitions:
    """What a module defines at its top level."""

    module: str
    workflows: list[Workflow[Any, Any]]
    deferreds: list[DurableDeferred[Any]]
    entities: list[Entity[Any]] = field(default_factory=list)


def load_definitions(target: str) -> Definitions:
    """Imports `target` and collects the workflows, deferreds and entities among its globals.

    `target` is a module name (`myapp.workflows`, found from the current directory too) or the
    path of a Python file. Importing it registers its workflows' implementations. Workflows and
    entities it imports from elsewhere are served too: a module may gather the ones to serve.

    Raises:
        ModuleNotFoundError: No such module or file.
        NotFoundError: It defines no workflow and no entity.
    """
    module = _import(target)
    workflows: dict[int, Workflow[Any, Any]] = {}
    deferreds: dict[int, DurableDeferred[Any]] = {}
    entities: dict[int, Entity[Any]] = {}
    for value in vars(module).values():
        if isinstance(value, Workflow):
            workflows.setdefault(id(value), value)
        elif isinstance(value, DurableDeferred):
            deferreds.setdefault(id(value), value)
        elif isinstance(value, Entity):
            entities.setdefault(id(value), value)
    if not workflows and not entities:
        msg = (
            f"module {module.__name__!r} defines no plait.Workflow or plait.Entity at its top level"
        )
        raise NotFoundError(msg)
    return Definitions(
        module.__name__,
        list(workflows.values()),
        list(deferreds.values()),
        list(entities.values()),
    )


def _import(target: str) -> ModuleType:
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            msg = f"no Python file {target!r}"
            raise ModuleNotFoundError(msg)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            msg = f"cannot import {target!r}"
            raise ModuleNotFoundError(msg)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        sys.path.insert(0, str(path.parent))  # its own imports, as `python file.py` finds them
        spec.loader.exec_module(module)
        return module
    # As `python -m` does: modules of the current directory first.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(target)
