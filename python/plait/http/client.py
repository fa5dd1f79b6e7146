"""The typed client of the proxy: the same `Workflow` and `Rpc` objects, over HTTP (httpx)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import BaseModel, TypeAdapter, ValidationError

from plait.cluster import MailboxFull, Rpc
from plait.deferred import DurableDeferred
from plait.engine import ExecutionPage, ExecutionStatusName, ExecutionTimeline
from plait.errors import DeferredTokenError
from plait.exits import Complete, Exit, Success, Suspended
from plait.http.errors import ProxyUnavailableError, UnexpectedResponseError
from plait.http.wire import (
    CAUSE_HEADER,
    DEFAULT_PORT,
    EXECUTION_ID_HEADER,
    ClusterStatus,
    DeferredStored,
    DeferredWire,
    EntityInfo,
    ExecutionCounts,
    ExecutionStatus,
    RpcWire,
    WorkflowWire,
    entity_id_segment,
    error_from_problem,
    workflow_path,
)
from plait.http.workflow_client import WorkflowClient
from plait.ids import DeferredToken
from plait.schedule import Schedule
from plait.workflow import Workflow

__all__ = ["DEFAULT_RETRY", "DEFAULT_URL", "Client"]

P = TypeVar("P", bound=BaseModel)
S = TypeVar("S")
M = TypeVar("M", bound=BaseModel)
A = TypeVar("A")

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: Retries of a request that could not reach the proxy, or got 503: 0.1 s doubling to 2 s,
#: 8 of them (about 6 s in all).
DEFAULT_RETRY = Schedule.exponential(0.1, factor=2.0, max_delay=2.0, times=8)

# Failures of the connection, not answers: the request may not have arrived, so it is sent
# again. Every call is idempotent (the same payload names the same execution; a deferred keeps
# its first result; a persisted RPC with a primary key is answered once), which makes that safe.
_RETRIED = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
# An RPC that may run twice is sent again only when it surely never arrived.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


class Client(WorkflowClient):
    """Calls workflows and entity RPCs through a plait proxy (`plait serve`, or `proxy_app`).

    Use it as an async context manager, or call `aclose()` when done. Results come back as
    the workflow's success type (an RPC's reply as its), and declared errors are raised again
    as their own class.

    Args:
        base_url: Where the proxy is (default `http://127.0.0.1:3020`).
        token: The proxy's bearer token, if it has one.
        retry: Delays between attempts when the proxy cannot be reached or answers 503
            (None: one attempt).
        timeout: Seconds to wait for an answer, except from `execute`, which waits for the
            workflow as long as it takes.
        max_connections: Connections open at once at most (None: no limit). Over HTTP/1.1
            each `execute` waiting for its workflow holds one.
        transport: An httpx transport to send requests through. The default is aiohttp's
            connection pool under httpx's API (`httpx_aiohttp`): httpx's own pool does work
            in proportion to its open connections on every request: it ran a thousand calls
            in flight at under 100 a second, where aiohttp's ran 700 to 1,100.

    Example::

        async with plait.Client("http://127.0.0.1:3020") as client:
            charge_id = await client.execute(ProcessOrder, order)  # a str
            try:
                await client.execute(ProcessOrder, free_order)
            except CardDeclined as err:  # the declared error, raised again as itself
                print(err.reason)
            total = await client.call(increment, "counter-7", Increment(by=2))  # an int
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        retry: Schedule | None = DEFAULT_RETRY,
        timeout: float | None = 30.0,
        max_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"accept": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.timeout = timeout
        # 0 is aiohttp's "no limit" (its default is 100).
        limits = httpx.Limits(max_connections=max_connections or 0, max_keepalive_connections=100)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout or 10.0, 10.0), pool=None),
            transport=transport if transport is not None else AiohttpTransport(limits=limits),
        )
        self._wires: dict[int, tuple[Workflow[Any, Any], WorkflowWire[Any]]] = {}
        self._rpc_wires: dict[int, tuple[Rpc[Any, Any], RpcWire[Any]]] = {}

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the client's connections."""
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # Workflows ---------------------------------------------------------------------------

    async def execute(self, workflow: Workflow[P, S], payload: P | Mapping[str, Any]) -> S:  # noqa: D102
        model = workflow.validate(payload)
        wire = self._wire(workflow)
        response = await self._send("POST", wire.path, body=_payload_json(model), wait=True)
        if response.status_code == 200:
            value: S = wire.decode_value(response.content or b"null", json_text=True)
            return value
        if response.status_code == 500:
            raise wire.error_of(response.headers.get(CAUSE_HEADER), _body(response))
        raise self._refusal(response, workflow=workflow.name)

    async def discard(self, workflow: Workflow[P, Any], payload: P | Mapping[str, Any]) -> str:  # noqa: D102
        model = workflow.validate(payload)
        path = f"{self._wire(workflow).path}/discard"
        response = await self._send("POST", path, body=_payload_json(model))
        if response.status_code != 204:
            raise self._refusal(response, workflow=workflow.name)
        return response.headers.get(EXECUTION_ID_HEADER) or workflow.execution_id(model)

    async def poll(  # noqa: D102
        self, workflow: Workflow[Any, S], execution_id: str
    ) -> Complete[S] | Suspended | None:
        status = await self.status(workflow, execution_id)
        return self._wire(workflow).result_of(status)

    async def status(
        self, workflow: Workflow[Any, Any] | str, execution_id: str
    ) -> ExecutionStatus:
        """The execution's status as the proxy gives it, its result and error as plain JSON.

        Raises:
            UnknownExecutionError: No such execution of the workflow.
        """
        response = await self._send("GET", f"{_path(workflow)}/{quote(execution_id, safe='')}")
        if response.status_code != 200:
            raise self._refusal(response, workflow=_name(workflow))
        try:
            return ExecutionStatus.model_validate_json(response.content)
        except ValidationError as err:
            msg = f"the proxy's status of {execution_id} is not one: {err}"
            raise UnexpectedResponseError(msg) from None

    async def interrupt(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:  # noqa: D102
        path = f"{_path(workflow)}/{quote(execution_id, safe='')}/interrupt"
        response = await self._send("POST", path)
        if response.status_code != 204:
            raise self._refusal(response, workflow=_name(workflow))

    async def resume(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:  # noqa: D102
        # Effect's route, so this also resumes through an Effect WorkflowProxy.
        body = json.dumps({"executionId": execution_id}).encode()
        response = await self._send("POST", f"{_path(workflow)}/resume", body=body)
        if response.status_code != 204:
            raise self._refusal(response, workflow=_name(workflow))

    async def cancel(self, workflow: Workflow[Any, Any] | str, execution_id: str) -> None:
        """Cancels the execution now: interrupted at once, its compensations run.

        Unlike `interrupt`, which lets the current run go on to its next wait, the running body
        is cancelled with the activity it awaits (Effect's `interruptUnsafe`).

        Raises:
            UnknownExecutionError: No such execution of the workflow.
        """
        path = f"{_path(workflow)}/{quote(execution_id, safe='')}/cancel"
        response = await self._send("POST", path)
        if response.status_code != 204:
            raise self._refusal(response, workflow=_name(workflow))

    # Executions of any workflow (the operators' routes) ----------------------------------

    async def executions(
        self,
        *,
        workflow: str | None = None,
        status: ExecutionStatusName | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> ExecutionPage:
        """A page of the proxy's stored executions, newest first (see `Engine.executions`)."""
        params = _query(
            workflow=workflow, status=status, since=since, until=until, limit=limit, after=after
        )
        response = await self._send("GET", "/executions", params=params)
        return self._model(response, ExecutionPage)

    async def execution_counts(
        self,
        *,
        workflow: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cap: int | None = None,
    ) -> ExecutionCounts:
        """How many stored executions have each status (see `Engine.execution_counts`)."""
        params = _query(workflow=workflow, since=since, until=until, cap=cap)
        response = await self._send("GET", "/executions/counts", params=params)
        return self._model(response, ExecutionCounts)

    async def timeline(self, execution_id: str) -> ExecutionTimeline:
        """The execution and its journal as a timeline (see `Engine.timeline`).

        Raises:
            UnknownExecutionError: No such execution is stored.
        """
        response = await self._send("GET", f"/executions/{quote(execution_id, safe='')}")
        return self._model(response, ExecutionTimeline)

    async def act(
        self, execution_id: str, action: Literal["interrupt", "resume", "cancel"]
    ) -> None:
        """Interrupts, resumes or cancels an execution by its id alone, whatever its workflow.

        Raises:
            UnknownExecutionError: No such execution is stored.
        """
        path = f"/executions/{quote(execution_id, safe='')}/{action}"
        response = await self._send("POST", path)
        if response.status_code != 204:
            raise self._refusal(response)

    # Entities ----------------------------------------------------------------------------

    async def call(  # noqa: D102
        self,
        rpc: Rpc[A, S],
        entity_id: str,
        payload: A | Mapping[str, Any] | None = None,
        *,
        discard: bool = False,
    ) -> S:
        # Only an RPC answered once is retried after it may have arrived: a persisted one with
        # a primary key. Others are sent again only if the connection was never made, and a
        # 503 (a full mailbox, say) is raised, not retried.
        wire = self._rpc_wire(rpc)
        path = f"{wire.path}/{quote(entity_id_segment(entity_id), safe='')}"
        body = rpc.encode_payload(payload)  # MalformedMessage: nothing is sent
        if discard:
            response = await self._send(
                "POST", f"{path}/discard", body=body, idempotent=wire.idempotent
            )
            if response.status_code != 204:
                raise self._rpc_refusal(response, rpc, entity_id)
            return cast("S", None)
        response = await self._send("POST", path, body=body, wait=True, idempotent=wire.idempotent)
        if response.status_code == 200:
            value: S = wire.decode_value(response.content or b"null", json_text=True)
            return value
        if response.status_code == 500:
            raise wire.error_of(response.headers.get(CAUSE_HEADER), _body(response))
        raise self._rpc_refusal(response, rpc, entity_id)

    async def entities(self) -> list[EntityInfo]:
        """The entity types the proxy serves, and the route of each RPC."""
        response = await self._send("GET", "/entities")
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            return _ENTITY_LIST.validate_json(response.content)
        except ValidationError as err:
            msg = f"the proxy's list of entities is not one: {err}"
            raise UnexpectedResponseError(msg) from None

    async def cluster(self) -> ClusterStatus:
        """What the proxy's engine sees of its cluster: runners, their shards, entities."""
        response = await self._send("GET", "/cluster")
        return self._model(response, ClusterStatus)

    def _rpc_wire(self, rpc: Rpc[Any, S]) -> RpcWire[S]:
        found = self._rpc_wires.get(id(rpc))
        if found is None or found[0] is not rpc:
            found = (rpc, RpcWire(rpc))
            self._rpc_wires[id(rpc)] = found
        return found[1]

    def _rpc_refusal(
        self, response: httpx.Response, rpc: Rpc[Any, Any], entity_id: str
    ) -> BaseException:
        error = self._refusal(response)
        if isinstance(error, MailboxFull):
            error.entity_type, error.entity_id = rpc.entity.name, entity_id
        return error

    # Deferreds ---------------------------------------------------------------------------

    async def done(self, deferred: DurableDeferred[Any], token: str, exit: Exit) -> bool:  # noqa: D102
        name = DeferredToken.parse(token).deferred_name
        if name != deferred.name:
            msg = f"token is for deferred {name!r}, not {deferred.name!r}"
            raise DeferredTokenError(msg)
        wire = DeferredWire(deferred)
        data = (
            wire.success_body(exit.value)
            if isinstance(exit, Success)
            else wire.failure_body(exit.error)
        )
        path = f"/deferred/{quote(token, safe='')}"
        response = await self._send("POST", path, body=json.dumps(data).encode())
        if response.status_code != 200:
            raise self._refusal(response, deferred=deferred.name)
        try:
            return DeferredStored.model_validate_json(response.content).stored
        except ValidationError as err:
            msg = f"the proxy's answer to a deferred's completion is not one: {err}"
            raise UnexpectedResponseError(msg) from None

    # Plumbing ----------------------------------------------------------------------------

    async def health(self) -> bool:
        """Whether the proxy answers and its engine runs (one attempt, no retry)."""
        try:
            response = await self._http.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _wire(self, workflow: Workflow[Any, S]) -> WorkflowWire[S]:
        found = self._wires.get(id(workflow))
        if found is None or found[0] is not workflow:
            found = (workflow, WorkflowWire(workflow))
            self._wires[id(workflow)] = found
        return found[1]

    def _model(self, response: httpx.Response, model: type[M]) -> M:
        """`response`'s body as `model`, or the error it stands for."""
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as err:
            msg = f"the proxy's answer is not a {model.__name__}: {err}"
            raise UnexpectedResponseError(msg) from None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        wait: bool = False,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Sends the request, again after each delay of `retry` while it fails to connect.

        A 503 (the proxy's engine is stopping or starting) is retried too. A request that is
        not `idempotent` is sent again only if it never reached the proxy, and a 503 is
        returned.

        Raises:
            ProxyUnavailableError: Every attempt failed.
        """
        headers = {"content-type": "application/json"} if body is not None else None
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if wait:  # an `execute` waits for its workflow, however long it takes
            timeout = httpx.Timeout(None, connect=min(self.timeout or 10.0, 10.0))
        delays = iter(()) if self.retry is None else self.retry.delays()
        while True:
            try:
                response = await self._http.request(
                    method, path, content=body, headers=headers, timeout=timeout, params=params
                )
            except _RETRIED as err:
                if not idempotent and not isinstance(err, _NEVER_SENT):
                    msg = f"{method} {self.base_url}{path} failed, and may have arrived: {err}"
                    raise ProxyUnavailableError(msg) from err
                reason: str = f"{type(err).__name__}: {err}"
                failure: BaseException = err
            else:
                if response.status_code != 503 or not idempotent:
                    return response
                failure = self._refusal(response)
                reason = str(failure)
            delay = next(delays, None)
            if delay is None:
                msg = f"{method} {self.base_url}{path} failed: {reason}"
                raise ProxyUnavailableError(msg) from failure
            await asyncio.sleep(delay)

    @staticmethod
    def _refusal(
        response: httpx.Response, *, workflow: str = "", deferred: str = ""
    ) -> BaseException:
        return error_from_problem(
            response.status_code, _body(response), workflow=workflow, deferred=deferred
        )


_ENTITY_LIST = TypeAdapter(list[EntityInfo])


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _query(**values: object) -> dict[str, str]:
    """Query parameters: those given, datetimes in ISO 8601."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else str(value)
        for name, value in values.items()
        if value is not None
    }


def _payload_json(model: BaseModel) -> bytes:
    # By alias: what the payload model reads, as the proxy validates it.
    return model.model_dump_json(by_alias=True).encode()


def _path(workflow: Workflow[Any, Any] | str) -> str:
    return workflow_path(_name(workflow))


def _name(workflow: Workflow[Any, Any] | str) -> str:
    return workflow if isinstance(workflow, str) else workflow.name
