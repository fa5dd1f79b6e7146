"""One live definition per workflow name and per decorated activity name.

A second definition made elsewhere is refused, naming both places; one nothing references
any more frees its name, and defining again at the same place replaces the first.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from pydantic import BaseModel

import plait
from plait._native import Store
from tests.workflow_support import poll_until

HERE = __name__


def _line_of(marker: str) -> int:
    """The line of this file holding `marker` (a comment on a definition)."""
    with open(__file__) as source:
        for number, line in enumerate(source, 1):
            if line.rstrip().endswith(f"# {marker}"):
                return number
    raise AssertionError(marker)


async def _body(payload: Any, execution_id: str) -> str:
    return "first"


async def _other_body(payload: Any, execution_id: str) -> str:
    return "second"


def test_a_second_live_workflow_of_a_name_is_refused_naming_both_definitions() -> None:
    first = plait.Workflow("DupTwice", success=str)  # first DupTwice
    first.implement(_body)
    second = plait.Workflow("DupTwice", success=str)  # second DupTwice
    with pytest.raises(plait.DuplicateNameError) as caught:
        second.implement(_other_body)
    err = caught.value
    assert isinstance(err, plait.PlaitError)
    assert isinstance(err, ValueError)
    assert (err.kind, err.name) == ("workflow", "DupTwice")
    assert err.first == f"{HERE}:{_line_of('first DupTwice')}"
    assert err.second == f"{HERE}:{_line_of('second DupTwice')}"
    assert err.first in str(err)
    assert err.second in str(err)
    assert second.handler is None  # refused: it stays unimplemented


def test_defining_a_workflow_is_not_registering_it() -> None:
    kept = plait.Workflow("DupClient", success=str)
    kept.implement(_body)
    client = plait.Workflow("DupClient", success=str)  # a caller's copy, for execute and poll
    assert client.name == kept.name


def _implemented(name: str) -> plait.Workflow[Any, str]:
    made = plait.Workflow(name, success=str)  # factory site
    made.implement(_body)
    return made


def test_the_same_definition_site_replaces_silently() -> None:
    first = _implemented("DupFactory")
    second = _implemented("DupFactory")
    assert first is not second
    with pytest.raises(plait.DuplicateNameError) as caught:
        plait.Workflow("DupFactory", success=str).implement(_other_body)
    assert caught.value.first == f"{HERE}:{_line_of('factory site')}"


def test_a_workflow_nothing_references_frees_its_name() -> None:
    _implemented("DupDropped")
    plait.Workflow("DupDropped", success=str).implement(_other_body)

    # One kept alive only by a reference cycle is found unreachable too.
    cyclic = plait.Workflow("DupCyclic", success=str)
    cyclic.implement(_body)
    cyclic.cycle = cyclic  # type: ignore[attr-defined]
    del cyclic
    plait.Workflow("DupCyclic", success=str).implement(_other_body)


Opened = plait.DurableDeferred("DupOpened", success=str)


def _waiting(name: str) -> plait.Workflow[Any, str]:
    made = plait.Workflow(name, success=str)

    @made.implement
    async def body(payload: Any, execution_id: str) -> str:
        return await Opened

    return made


def test_a_workflow_only_plait_holds_is_still_found_by_name() -> None:
    """A new engine runs a registered workflow whose definer dropped it, as before."""
    store = Store.memory()

    async def start() -> str:
        waiting = _waiting("DupOnlyRegistered")
        async with plait.Engine(store):
            execution_id = await waiting.execute({}, discard=True)
            await poll_until(waiting, execution_id, plait.Suspended)
        return execution_id

    execution_id = asyncio.run(start())  # its loop, engine and workflow are gone with it
    gc.collect()
    caller = plait.Workflow("DupOnlyRegistered", success=str)  # a caller's copy: no body

    async def finish() -> plait.Complete[str]:
        async with plait.Engine(store):
            await Opened.succeed(Opened.token_from_execution_id(caller, execution_id), "opened")
            return await poll_until(caller, execution_id, plait.Complete)

    assert asyncio.run(finish()) == plait.Complete(plait.Success("opened"))


def test_workflow_decorator_duplicates_name_the_functions() -> None:
    @plait.workflow(name="DupDecorated")  # first DupDecorated
    async def first(x: int) -> int:
        return x

    with pytest.raises(plait.DuplicateNameError) as caught:

        @plait.workflow(name="DupDecorated")  # second DupDecorated
        async def second(x: int) -> int:
            return x

    assert caught.value.first == f"{HERE}:{_line_of('first DupDecorated')}"
    assert caught.value.second == f"{HERE}:{_line_of('second DupDecorated')}"


def test_a_second_live_decorated_activity_of_a_name_is_refused() -> None:
    @plait.activity(name="DupStep")  # first DupStep
    def first() -> int:
        return 1

    with pytest.raises(plait.DuplicateNameError) as caught:

        @plait.activity(name="DupStep")  # second DupStep
        def second() -> int:
            return 2

    err = caught.value
    assert (err.kind, err.name) == ("activity", "DupStep")
    assert err.first == f"{HERE}:{_line_of('first DupStep')}"
    assert err.second == f"{HERE}:{_line_of('second DupStep')}"


def test_decorated_activities_follow_the_same_rules_as_workflows() -> None:
    def make() -> plait.ActivityFunction[[], int]:
        @plait.activity(name="DupMadeStep")
        def step() -> int:
            return 1

        return step

    kept = make()
    again = make()  # the same definition site: replaces
    assert kept is not again
    del kept, again
    gc.collect()

    @plait.activity(name="DupMadeStep")  # the made ones are gone: the name is free
    def elsewhere() -> int:
        return 3

    assert elsewhere.name == "DupMadeStep"


def test_inline_activities_are_steps_not_definitions() -> None:
    first = plait.Activity("DupInline", execute=lambda: 1, success=int)
    second = plait.Activity("DupInline", execute=lambda: 2, success=int)
    assert first.name == second.name


class Billing(plait.Workflow[BaseModel, str]):
    """A user's subclass: its `__init__` is not where a workflow is defined."""

    def __init__(self, name: str) -> None:
        super().__init__(name, success=str)


def test_a_subclass_defines_workflows_where_they_are_built() -> None:
    first = Billing("DupSubclass")  # first Billing
    first.implement(_body)
    with pytest.raises(plait.DuplicateNameError) as caught:
        Billing("DupSubclass").implement(_other_body)  # second Billing
    assert caught.value.first == f"{HERE}:{_line_of('first Billing')}"
    assert caught.value.second == f"{HERE}:{_line_of('second Billing')}"
