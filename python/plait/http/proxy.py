"""The HTTP proxy: an ASGI application (FastAPI) that runs workflows and entity RPCs.

Routes, for each workflow served (`<name>` is its name in lower case):

=================================== ===============================================================
`POST /<name>`                      Effect's: execute and wait. 200 with the result as JSON (no
                                    body for a workflow with no result); a declared error: 500
                                    with its tagged JSON; a defect or an interruption: 500.
`POST /<name>/discard`              Effect's: start it; 204, the execution id in the
                                    `Plait-Execution-Id` header.
`POST /<name>/resume`               Effect's: `{"executionId": ...}`, resume a suspended
                                    execution; 204.
`GET /<name>/<execution_id>`        The status, and the result or error once there is one.
`POST /<name>/<execution_id>/interrupt`  Interrupt it; 204.
`POST /<name>/<execution_id>/resume`     Resume it; 204.
`POST /<name>/<execution_id>/cancel`     Cancel it now (see below); 204.
=================================== ===============================================================

Operators' routes, for executions of any workflow in the store:

=================================== ===============================================================
`GET /executions`                   List and search: `workflow`, `status` (running, suspended,
                                    succeeded, failed, interrupted), `since`, `until` (ISO 8601),
                                    `limit`, `after` (the previous page's `next`). Newest first.
`GET /executions/counts`            How many have each status (same filters; capped).
`GET /executions/<execution_id>`    The execution and its journal as a timeline.
`POST /executions/<id>/interrupt`   Interrupt, resume or cancel it by id alone; 204.
`POST /executions/<id>/resume`
`POST /executions/<id>/cancel`
`GET /dashboard`                    The web dashboard (`plait.http.dashboard`).
=================================== ===============================================================

Interrupt and cancel both end an execution as interrupted, running its compensations and
finalizers and interrupting its children. Interrupt lets the current run go on until it next
awaits a step it has not stored (Effect's `interrupt`); cancel stops the running body at once,
cancelling the activity it awaits (Effect's `interruptUnsafe`, `Engine.interrupt_unsafe`).

Routes for each RPC of the entities served (`<entity>` and `<rpc>` their names in lower case),
Effect's `EntityProxy.toHttpApiGroup` routes under the prefix `/<entity>`:

=========================================== =======================================================
`POST /<entity>/<rpc>/<entity_id>`          Send the RPC (the body is its payload; none or `null`
                                            for an RPC without one) and wait: 200 with the reply
                                            as JSON (no body for no reply value); its failures
                                            as a workflow's (500, tagged JSON, `Plait-Cause`).
`POST /<entity>/<rpc>/<entity_id>/discard`  Send it without waiting: 204 once a mailbox took it
                                            (a persisted one: once stored).
`GET /entities`                             The entity types served and their RPCs.
`GET /cluster`                              The runners and their shards (served from a
                                            `plait.Runner`), and the entities resident here.
=========================================== =======================================================

An RPC is sent as `Rpc.call` sends it in process: on a cluster, a persisted request for an
entity another runner holds is saved for that runner, and its reply comes back through the
database. The cluster's errors have their statuses: `MalformedMessage` 422,
`AlreadyProcessingMessage` 409, `MailboxFull` and `EntityNotAssignedToRunner` 503.

And `POST /deferred/<token>` (complete a deferred: a webhook's target), `GET /health`, and the
OpenAPI schema at `/openapi.json`. A request refused (a payload that does not validate, bad
JSON, a body over the limit, a malformed token, an unknown workflow, RPC or execution) is
answered with a 4xx and stores nothing. Kept free for what is to come: `GET /<name>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic_core import PydanticSerializationError
from starlette.exceptions import HTTPException

from plait._native import __version__
from plait.cluster import Entity, MalformedMessage, Rpc, Runner
from plait.cluster.entity import StreamRpc
from plait.cluster.runtime import runtime_of
from plait.deferred import DurableDeferred
from plait.engine import Engine, ExecutionPage, ExecutionStatusName, ExecutionTimeline
from plait.engine.listing import DEFAULT_COUNT_CAP
from plait.errors import (
    Defect,
    EngineClosedError,
    InvalidArgumentError,
    PayloadError,
    PlaitError,
    UnknownExecutionError,
)
from plait.exits import Exit, Failure, Success
from plait.http.dashboard import add_dashboard
from plait.http.errors import (
    InvalidRequestError,
    MalformedRequestError,
    NotFoundError,
    ProxyUnavailableError,
    UnsupportedMediaTypeError,
)
from plait.http.guard import AccessGuard, BodyLimit
from plait.http.wire import (
    CAUSE_HEADER,
    EXECUTION_ID_HEADER,
    EXECUTION_ID_PATTERN,
    ClusterStatus,
    DeferredCompletion,
    DeferredStored,
    DeferredSuccessBody,
    DeferredWire,
    EntityInfo,
    ExecutionCounts,
    Problem,
    ResumePayload,
    RpcInfo,
    RpcWire,
    RunnerShards,
    WorkflowWire,
    jsonable,
    problem_of,
    status_of,
)
from plait.ids import DeferredToken
from plait.observability.metrics import enable_metrics, exposition
from plait.workflow import Workflow

__all__ = ["DEFAULT_MAX_BODY_BYTES", "RESERVED_PATHS", "proxy_app"]

log = logging.getLogger("plait.http")

#: The largest request body accepted unless `max_body_bytes` says otherwise: 1 MiB.
DEFAULT_MAX_BODY_BYTES = 1 << 20

#: First path segments that no workflow may take: routes of the proxy, now or to come.
RESERVED_PATHS = frozenset(
    {
        "health",
        "deferred",
        "openapi.json",
        "docs",
        "redoc",
        "executions",
        "dashboard",
        "entities",
        "cluster",
        "metrics",
    }
)

ExecutionId = Annotated[
    str, Path(pattern=EXECUTION_ID_PATTERN, description="The execution's id: 32 hex digits.")
]
# Any path segment but NUL, which no store can hold (a segment is never empty, and has no `/`).
EntityId = Annotated[
    str, Path(pattern=r"^[^\x00]+$", description="The entity instance's id (one path segment).")
]

# The filters of the listing routes (module level: FastAPI reads the annotations by name).
_WORKFLOW_QUERY = Query(description="Only executions of this workflow (its exact name).")
_SINCE_QUERY = Query(description="Only executions started at or after this (ISO 8601).")
_UNTIL_QUERY = Query(description="Only executions started before this (ISO 8601).")

# The answers every route may give before it runs, whoever calls it.
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "UnauthorizedError: the bearer token is missing."},
    403: {"model": Problem, "description": "ForbiddenError: not from loopback, and no token."},
    503: {"model": Problem, "description": "The engine is not running (NoEngineError, ...)."},
}
_BODY_REFUSALS: dict[int | str, dict[str, Any]] = {
    **_REFUSALS,
    400: {"model": Problem, "description": "MalformedRequestError: the body is not JSON."},
    413: {"model": Problem, "description": "RequestTooLargeError: the body is too large."},
    415: {"model": Problem, "description": "UnsupportedMediaTypeError: not application/json."},
}


@dataclass(frozen=True)
class _Served:
    """What the proxy serves, found by the routes."""

    engine: Engine
    runner: Runner | None
    workflows: dict[str, WorkflowWire[Any]]  # by route path
    entities: list[Entity[Any]]
    rpcs: dict[str, RpcWire[Any]]  # by route path, before its `/{entity_id}`
    deferreds: dict[str, DeferredWire]  # by name
    payload_routes: dict[str, str]  # route path -> workflow name, for PayloadError
    rpc_routes: dict[str, str]  # route path -> "Entity.rpc", for MalformedMessage


def proxy_app(
    workflows: Iterable[Workflow[Any, Any]],
    *,
    engine: Engine | None = None,
    runner: Runner | None = None,
    entities: Iterable[Entity[Any]] = (),
    deferreds: Iterable[DurableDeferred[Any]] = (),
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    title: str = "plait workflow proxy",
    metrics: bool = True,
) -> FastAPI:
    """The proxy for `workflows` and `entities` on `engine` (or `runner`), as an ASGI application.

    Run it with `plait serve`, `plait.http.serve`, or any ASGI server; or mount it in your own
    application (`app.mount("/workflows", proxy_app(...))`). Run standalone, it starts the
    engine (or runner) when the server starts and closes it when the server stops (unless it
    was started already). Mounted, it does not: start it in your application's lifespan.

    Args:
        workflows: The workflows to serve; each gets the routes under `/<name in lower case>`.
        engine: The engine that runs them. Give this or `runner`.
        runner: A runner of a cluster: its engine runs them, an entity RPC goes to whichever
            runner holds the entity, and `GET /cluster` (and the dashboard) shows the cluster.
        entities: The entity types whose RPCs to serve, each RPC at
            `POST /<entity in lower case>/<rpc in lower case>/<entity_id>` (and `.../discard`),
            Effect's `EntityProxy` routes. Streaming RPCs are not served.
        deferreds: The deferreds that `POST /deferred/<token>` may complete; a completion's
            value is validated against the deferred's `success` type.
        token: A bearer token every request must carry (all but `GET /health`). Without one
            the proxy answers only requests on loopback addresses, to loopback host names.
        max_body_bytes: The largest request body accepted; larger gets 413.
        title: The title of the OpenAPI schema.
        metrics: Serve `GET /metrics` (Prometheus's text format; it needs the token as any
            route does), which enables plait's metrics in this process. Needs
            `prometheus_client` (the `http` extra has it).

    Raises:
        InvalidArgumentError: Neither or both of `engine` and `runner`; two workflows, RPCs
            (or deferreds) share a route (or a name); a workflow's or entity's name cannot be a
            path segment or takes a reserved one; or the token is empty or holds whitespace.

    Example:
        >>> import plait
        >>> from plait.http import proxy_app
        >>> Ping = plait.Workflow("Ping", payload={"n": int}, success=int)
        >>> app = proxy_app([Ping], engine=plait.Engine.memory())
        >>> sorted(p for p in app.openapi()["paths"] if p.startswith("/ping"))[:4]
        ['/ping', '/ping/discard', '/ping/resume', '/ping/{execution_id}']
    """
    if (engine is None) == (runner is None):
        msg = "proxy_app takes an engine= or a runner=, one of the two"
        raise InvalidArgumentError(msg)
    engine_ = runner.engine if runner is not None else engine
    assert engine_ is not None
    workflow_wires = _workflow_wires(workflows)
    entity_list = _entity_list(entities)
    served = _Served(
        engine=engine_,
        runner=runner,
        workflows=workflow_wires,
        entities=entity_list,
        rpcs=_rpc_wires(entity_list, workflow_wires),
        deferreds=_deferred_wires(deferreds),
        payload_routes={},
        rpc_routes={},
    )
    _check_token(token)
    if max_body_bytes < 1:
        msg = f"max_body_bytes must be at least 1, got {max_body_bytes}"
        raise InvalidArgumentError(msg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        owned = not _started(engine_)
        if owned:
            await (runner.start() if runner is not None else engine_.start())
        try:
            yield
        finally:
            if owned:
                await (runner.close() if runner is not None else engine_.close())

    app = FastAPI(
        title=title,
        version=__version__,
        description=(
            "Durable workflows and entities over HTTP: Effect's WorkflowProxy and EntityProxy "
            "routes, and plait's."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        separate_input_output_schemas=False,
    )
    app.state.plait_token = token
    _add_error_handlers(app, served)
    _add_service_routes(app, served)
    _add_execution_routes(app, served)
    _add_cluster_routes(app, served)
    if metrics:
        _add_metrics_route(app)
    add_dashboard(app)
    for wire in served.workflows.values():
        _add_workflow_routes(app, served, wire)
    for rpc_wire in served.rpcs.values():
        _add_rpc_routes(app, served, rpc_wire)
    # The last added runs first: the token before the body is read.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(AccessGuard, token=token)
    app.openapi()  # built now, so a schema pydantic cannot express fails here, not on a request
    return app


# Building -----------------------------------------------------------------------------------


def _workflow_wires(workflows: Iterable[Workflow[Any, Any]]) -> dict[str, WorkflowWire[Any]]:
    wires: dict[str, WorkflowWire[Any]] = {}
    for workflow in workflows:
        if not isinstance(workflow, Workflow):
            msg = f"proxy_app serves plait.Workflow objects, got {workflow!r}"
            raise InvalidArgumentError(msg)
        wire = WorkflowWire(workflow)
        segment = wire.path[1:]
        if not _is_segment(segment):
            msg = f"workflow {workflow.name!r}: its name cannot be a URL path segment"
            raise InvalidArgumentError(msg)
        if segment in RESERVED_PATHS:
            msg = f"workflow {workflow.name!r}: /{segment} is one of the proxy's own routes"
            raise InvalidArgumentError(msg)
        other = wires.get(wire.path)
        if other is not None and other.workflow is not workflow:
            msg = (
                f"workflows {other.workflow.name!r} and {workflow.name!r} share the route "
                f"{wire.path}"
            )
            raise InvalidArgumentError(msg)
        wires[wire.path] = wire
    return wires


def _entity_list(entities: Iterable[Entity[Any]]) -> list[Entity[Any]]:
    found: dict[int, Entity[Any]] = {}
    for entity in entities:
        if not isinstance(entity, Entity):
            msg = f"entities= takes plait.Entity objects, got {entity!r}"
            raise InvalidArgumentError(msg)
        found.setdefault(id(entity), entity)
    return list(found.values())


def _rpc_wires(
    entities: list[Entity[Any]], workflows: dict[str, WorkflowWire[Any]]
) -> dict[str, RpcWire[Any]]:
    wires: dict[str, RpcWire[Any]] = {}
    segments: dict[str, Entity[Any]] = {}
    for entity in entities:
        segment = entity.name.lower()
        if not _is_segment(segment):
            msg = f"entity {entity.name!r}: its name cannot be a URL path segment"
            raise InvalidArgumentError(msg)
        if segment in RESERVED_PATHS:
            msg = f"entity {entity.name!r}: /{segment} is one of the proxy's own routes"
            raise InvalidArgumentError(msg)
        if f"/{segment}" in workflows:
            # `/<name>/<rpc>/<id>` and `/<name>/<execution id>/<action>` would overlap.
            other = workflows[f"/{segment}"].workflow.name
            msg = f"entity {entity.name!r} and workflow {other!r} share the route /{segment}"
            raise InvalidArgumentError(msg)
        other_entity = segments.setdefault(segment, entity)
        if other_entity is not entity:
            msg = f"entities {other_entity.name!r} and {entity.name!r} share the route /{segment}"
            raise InvalidArgumentError(msg)
        for rpc in entity.rpcs.values():
            if isinstance(rpc, StreamRpc):
                continue  # a stream of chunks is not one JSON body: not served over HTTP yet
            if not _is_segment(rpc.name.lower()):
                msg = f"RPC {entity.name}.{rpc.name}: its name cannot be a URL path segment"
                raise InvalidArgumentError(msg)
            wire = RpcWire(rpc)
            found = wires.setdefault(wire.path, wire)
            if found.rpc is not rpc:
                msg = (
                    f"RPCs {entity.name}.{found.rpc.name} and {entity.name}.{rpc.name} share "
                    f"the route {wire.path}"
                )
                raise InvalidArgumentError(msg)
    return wires


def _is_segment(segment: str) -> bool:
    return not any(c in segment for c in "/{}") and segment not in {"", ".", ".."}


def _deferred_wires(deferreds: Iterable[DurableDeferred[Any]]) -> dict[str, DeferredWire]:
    wires: dict[str, DeferredWire] = {}
    for deferred in deferreds:
        if not isinstance(deferred, DurableDeferred):
            msg = f"deferreds= takes plait.DurableDeferred objects, got {deferred!r}"
            raise InvalidArgumentError(msg)
        other = wires.get(deferred.name)
        if other is not None and other.deferred is not deferred:
            msg = f"two deferreds are named {deferred.name!r}; a token names a deferred by name"
            raise InvalidArgumentError(msg)
        wires[deferred.name] = DeferredWire(deferred)
    return wires


def _check_token(token: str | None) -> None:
    if token is None:
        return
    # It travels in an HTTP header: printable ASCII, no spaces.
    if not token or not token.isascii() or any(c.isspace() or not c.isprintable() for c in token):
        msg = "the token must be a non-empty string of printable ASCII characters, without spaces"
        raise InvalidArgumentError(msg)


def _started(engine: Engine) -> bool:
    try:
        engine.require_loop()
    except PlaitError:
        return False
    return True


def _endpoint(
    fn: Callable[..., Awaitable[Response]],
    params: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> Callable[..., Awaitable[Response]]:
    """`fn` with the signature FastAPI reads its parameters (and their schemas) from.

    A parameter in `defaults` is optional, with that default.
    """
    kind = inspect.Parameter.KEYWORD_ONLY
    empty = inspect.Parameter.empty
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(name, kind, annotation=tp, default=(defaults or {}).get(name, empty))
            for name, tp in params.items()
        ],
        return_annotation=Response,
    )
    return fn


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _problem(error: BaseException, headers: dict[str, str] | None = None) -> Response:
    status, problem = problem_of(error)
    if status == 500:
        log.error("plait proxy: %s", problem.message, exc_info=error)
    return Response(
        problem.model_dump_json().encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


# Errors -------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI, served: _Served) -> None:
    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _problem(_validation_error(request, exc, served))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            served_paths = ", ".join(sorted(served.workflows)) or "none"
            message = f"no route {request.method} {request.url.path}; workflows: {served_paths}"
            if served.rpcs:
                rpcs = ", ".join(f"{path}/{{entity_id}}" for path in sorted(served.rpcs))
                message = f"{message}; entity RPCs: {rpcs}"
            return _problem(NotFoundError(message))
        if exc.status_code == 400:  # a body FastAPI could not even decode
            return _problem(MalformedRequestError(f"the body cannot be read: {exc.detail}"))
        problem = Problem(_tag="HTTPError", message=str(exc.detail))
        return Response(
            problem.model_dump_json().encode(),
            status_code=exc.status_code,
            media_type="application/json",
            headers=exc.headers,
        )

    async def plait_error(_request: Request, exc: Exception) -> Response:
        return _problem(exc)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(PlaitError, plait_error)


def _validation_error(request: Request, exc: RequestValidationError, served: _Served) -> Exception:
    """What a request FastAPI could not read was: bad JSON, not JSON, or invalid values."""
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        invalid = next(error for error in errors if error.get("type") == "json_invalid")
        position = tuple(invalid.get("loc", ()))[-1:] or ("?",)
        detail = invalid.get("ctx", {}).get("error", "")
        return MalformedRequestError(
            f"the body is not valid JSON: {detail} (at character {position[0]})"
        )
    content_type = request.headers.get("content-type")
    body_errors = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
    if content_type and not _is_json(content_type) and body_errors:
        msg = f"the body must be application/json, not {content_type}"
        return UnsupportedMediaTypeError(msg)
    details = [
        {k: v for k, v in error.items() if k != "url"}
        | {"loc": list(error.get("loc", ()))[1:] if error in body_errors else error.get("loc")}
        for error in errors
    ]
    details = jsonable(details)
    summary = "; ".join(
        f"{'.'.join(map(str, d['loc'])) or 'body'}: {d.get('msg', '')}" for d in details
    )
    route_path = getattr(request.scope.get("route"), "path", "")
    workflow = served.payload_routes.get(route_path)
    if workflow is not None and body_errors:
        return PayloadError(workflow, details, summary)
    rpc = served.rpc_routes.get(route_path)
    if rpc is not None and body_errors and len(body_errors) == len(errors):
        # What `Rpc.call` raises in process for the same payload.
        return MalformedMessage(f"invalid payload for RPC {rpc}: {summary}", details)
    return InvalidRequestError(f"invalid request: {summary}", details)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


# Routes -------------------------------------------------------------------------------------


def _add_service_routes(app: FastAPI, served: _Served) -> None:
    engine = served.engine

    async def health() -> Response:
        """`ok` while the engine runs (503 otherwise); needs no token."""
        engine.require_loop()
        return PlainTextResponse("ok")

    app.add_api_route(
        "/health",
        health,
        methods=["GET"],
        tags=["health"],
        operation_id="health",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )

    async def complete_deferred(token: str, body: Any) -> Response:
        parsed = DeferredToken.parse(token)
        wire = served.deferreds.get(parsed.deferred_name)
        if wire is None:
            msg = f"deferred {parsed.deferred_name!r} is not served by this proxy"
            raise NotFoundError(msg)
        exit_: Exit = (
            Success(body.value)
            if isinstance(body, DeferredSuccessBody)
            else Failure(wire.error_of(body.error))
        )
        stored = await wire.deferred.done(token, exit_, engine=engine)
        return _json(DeferredStored(stored=stored).model_dump())

    app.add_api_route(
        "/deferred/{token}",
        _endpoint(
            complete_deferred,
            {
                "token": Annotated[str, Path(description="The deferred's token.")],
                "body": DeferredCompletion,
            },
        ),
        methods=["POST"],
        tags=["deferreds"],
        operation_id="completeDeferred",
        summary="Complete a deferred by its token (a webhook's target)",
        description=(
            "Stores the deferred's result, validated against its type, and wakes its "
            "execution. `stored` is false if it had a result already (the first one stays)."
        ),
        response_class=Response,
        responses={
            200: {"model": DeferredStored},
            **_BODY_REFUSALS,
            400: {"model": Problem, "description": "MalformedTokenError, MalformedRequestError"},
            404: {"model": Problem, "description": "DeferredTokenError, NotFoundError"},
            422: {"model": Problem, "description": "DeferredValueError: pydantic's details."},
        },
    )


def _add_metrics_route(app: FastAPI) -> None:
    enable_metrics()  # now: counted from the proxy's start, not its first scrape

    async def metrics() -> Response:
        """Plait's metrics, and any other of the process's default registry, for Prometheus."""
        body, content_type = await exposition()
        return Response(body, media_type=content_type)

    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        tags=["health"],
        operation_id="metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )


def _add_execution_routes(app: FastAPI, served: _Served) -> None:
    engine = served.engine
    unknown: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "UnknownExecutionError"}
    }
    invalid: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem, "description": "InvalidArgumentError: a cursor that is not one."},
        422: {"model": Problem, "description": "InvalidRequestError: pydantic's details."},
    }

    async def list_executions(
        workflow: Annotated[str | None, _WORKFLOW_QUERY] = None,
        status: Annotated[
            ExecutionStatusName | None, Query(description="Only executions with this status.")
        ] = None,
        since: Annotated[datetime | None, _SINCE_QUERY] = None,
        until: Annotated[datetime | None, _UNTIL_QUERY] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 50,
        after: Annotated[
            str | None,
            Query(max_length=64, description="Where the previous page ended (its `next`)."),
        ] = None,
    ) -> ExecutionPage:
        """Executions of every workflow in the store, newest first, a page at a time."""
        return await engine.executions(
            workflow=workflow, status=status, since=since, until=until, limit=limit, after=after
        )

    app.add_api_route(
        "/executions",
        list_executions,
        methods=["GET"],
        tags=["executions"],
        operation_id="listExecutions",
        summary="List and search executions",
        response_model=ExecutionPage,
        responses={**_REFUSALS, **invalid},
    )

    async def count_executions(
        workflow: Annotated[str | None, _WORKFLOW_QUERY] = None,
        since: Annotated[datetime | None, _SINCE_QUERY] = None,
        until: Annotated[datetime | None, _UNTIL_QUERY] = None,
        cap: Annotated[
            int, Query(ge=1, le=1_000_000, description="Each count stops here (at least).")
        ] = DEFAULT_COUNT_CAP,
    ) -> ExecutionCounts:
        """How many executions have each status; a count equal to `cap` means at least."""
        counts = await engine.execution_counts(workflow=workflow, since=since, until=until, cap=cap)
        return ExecutionCounts(cap=cap, **counts)

    app.add_api_route(
        "/executions/counts",
        count_executions,
        methods=["GET"],
        tags=["executions"],
        operation_id="countExecutions",
        summary="Count executions by status",
        response_model=ExecutionCounts,
        responses={**_REFUSALS, **invalid},
    )

    async def timeline(execution_id: ExecutionId) -> ExecutionTimeline:
        """The execution, and its journal as a timeline."""
        return await engine.timeline(execution_id)

    app.add_api_route(
        "/executions/{execution_id}",
        timeline,
        methods=["GET"],
        tags=["executions"],
        operation_id="executionTimeline",
        summary="An execution and its journal as a timeline",
        response_model=ExecutionTimeline,
        responses={**_REFUSALS, **unknown, **invalid},
    )

    actions: dict[str, tuple[Callable[[str], Awaitable[None]], str]] = {
        "interrupt": (
            engine.interrupt,
            "It completes as interrupted once its current run reaches its next wait, after "
            "running its compensations and finalizers; its children are interrupted too.",
        ),
        "resume": (engine.resume, "A new run of a suspended execution (nothing otherwise)."),
        "cancel": (
            engine.interrupt_unsafe,
            "It is interrupted now: the running body is cancelled with the activity it awaits, "
            "then its compensations and finalizers run and it completes as interrupted.",
        ),
    }
    for action, (act, description) in actions.items():
        app.add_api_route(
            f"/executions/{{execution_id}}/{action}",
            _endpoint(_act_by_id(engine, act), {"execution_id": ExecutionId}),
            methods=["POST"],
            tags=["executions"],
            operation_id=f"{action}Execution",
            summary=f"{action.capitalize()} an execution by its id",
            description=description,
            status_code=204,
            response_class=Response,
            responses={204: {"description": "Done."}, **_REFUSALS, **unknown, **invalid},
        )


def _act_by_id(
    engine: Engine, act: Callable[[str], Awaitable[None]]
) -> Callable[..., Awaitable[Response]]:
    async def by_id(execution_id: str) -> Response:
        if await engine.workflow_of(execution_id) is None:
            raise UnknownExecutionError(f"no execution {execution_id}")
        await act(execution_id)
        return Response(status_code=204)

    return by_id


def _add_workflow_routes(app: FastAPI, served: _Served, wire: WorkflowWire[Any]) -> None:
    engine = served.engine
    workflow = wire.workflow
    name, path = workflow.name, wire.path
    payload_model = workflow.payload_model
    served.payload_routes[path] = name
    served.payload_routes[f"{path}/discard"] = name

    async def execute(payload: Any) -> Response:
        execution_id = _storable(workflow, payload)
        headers = {EXECUTION_ID_HEADER: execution_id}
        try:
            value = await workflow.execute(payload, engine=engine)
        except asyncio.CancelledError:
            # The server is stopping and gave up on requests still waiting. The execution is
            # stored and goes on under the next engine; a 503 tells the client to retry (it
            # then joins the same execution), where a dropped request would look like a bug.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            stopping = ProxyUnavailableError("the proxy is stopping; call again to wait on")
            return _problem(stopping, headers)
        except Exception as error:
            if isinstance(error, EngineClosedError) or not wire.is_outcome(error):
                return _problem(error, headers)
            cause, body = wire.cause(error)
            return _json(body, 500, {**headers, CAUSE_HEADER: cause})
        body_bytes = wire.encode_value(value)
        media = "application/json" if body_bytes else None
        return Response(body_bytes, status_code=200, media_type=media, headers=headers)

    async def discard(payload: Any) -> Response:
        _storable(workflow, payload)
        execution_id = await workflow.execute(payload, discard=True, engine=engine)
        return Response(status_code=204, headers={EXECUTION_ID_HEADER: execution_id})

    async def owned(execution_id: str) -> None:
        if await engine.workflow_of(execution_id) != name:
            msg = f"no execution {execution_id} of workflow {name!r}"
            raise UnknownExecutionError(msg)

    async def resume(body: ResumePayload) -> Response:
        await owned(body.execution_id)
        await workflow.resume(body.execution_id, engine=engine)
        return Response(status_code=204)

    async def status(execution_id: str) -> Response:
        await owned(execution_id)
        result = await workflow.poll(execution_id, engine=engine)
        return _json(status_of(wire, execution_id, result).model_dump(mode="json"))

    async def interrupt(execution_id: str) -> Response:
        await owned(execution_id)
        await workflow.interrupt(execution_id, engine=engine)
        return Response(status_code=204)

    async def resume_by_id(execution_id: str) -> Response:
        await owned(execution_id)
        await workflow.resume(execution_id, engine=engine)
        return Response(status_code=204)

    async def cancel(execution_id: str) -> Response:
        await owned(execution_id)
        await workflow.interrupt_unsafe(execution_id, engine=engine)
        return Response(status_code=204)

    id_header = {
        EXECUTION_ID_HEADER: {
            "description": "The execution's id.",
            "schema": {"type": "string", "pattern": EXECUTION_ID_PATTERN},
        }
    }
    unknown: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "UnknownExecutionError"}
    }
    invalid_payload: dict[int | str, dict[str, Any]] = {
        422: {"model": Problem, "description": "PayloadError: pydantic's details."}
    }
    invalid_id: dict[int | str, dict[str, Any]] = {
        422: {"model": Problem, "description": "InvalidArgumentError: a malformed id."}
    }
    success: dict[str, Any] = {"description": "Completed: its result.", "headers": id_header}
    if wire.void:
        success["description"] = "Completed (the workflow has no result: no body)."
    else:
        success["model"] = wire.success_type
    app.add_api_route(
        path,
        _endpoint(execute, {"payload": payload_model}),
        methods=["POST"],
        tags=["workflows"],
        operation_id=name,
        summary=f"Execute {name} and wait for its result",
        description=(
            "Effect's WorkflowProxy route. The same payload always names the same execution: "
            "calling again joins it, or returns its stored result."
        ),
        response_class=Response,
        responses={
            200: success,
            **_BODY_REFUSALS,
            **invalid_payload,
            500: {
                "model": wire.failure_union(),
                "description": (
                    "The workflow failed: a declared error as its tagged JSON, or a defect "
                    "(`Die`) or an interruption (`Interrupt`); the Plait-Cause header says "
                    "which (Fail, Die, Interrupt)."
                ),
            },
        },
    )
    app.add_api_route(
        f"{path}/discard",
        _endpoint(discard, {"payload": payload_model}),
        methods=["POST"],
        tags=["workflows"],
        operation_id=f"{name}Discard",
        summary=f"Start {name} without waiting",
        status_code=204,
        response_class=Response,
        responses={
            204: {"description": "Started (or joined).", "headers": id_header},
            **_BODY_REFUSALS,
            **invalid_payload,
        },
    )
    app.add_api_route(
        f"{path}/resume",
        _endpoint(resume, {"body": ResumePayload}),
        methods=["POST"],
        tags=["workflows"],
        operation_id=f"{name}Resume",
        summary=f"Resume a suspended execution of {name}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "Resumed."}, **_BODY_REFUSALS, **unknown, **invalid_id},
    )
    app.add_api_route(
        f"{path}/{{execution_id}}",
        _endpoint(status, {"execution_id": ExecutionId}),
        methods=["GET"],
        tags=["executions"],
        operation_id=f"{name}Status",
        summary=f"The status of an execution of {name}, and its result or error",
        response_class=Response,
        responses={200: {"model": wire.status_model()}, **_REFUSALS, **unknown, **invalid_id},
    )
    app.add_api_route(
        f"{path}/{{execution_id}}/interrupt",
        _endpoint(interrupt, {"execution_id": ExecutionId}),
        methods=["POST"],
        tags=["executions"],
        operation_id=f"{name}Interrupt",
        summary=f"Interrupt an execution of {name}",
        description=(
            "It completes as interrupted when its current run ends, after running its "
            "compensations and finalizers; its child executions are interrupted too."
        ),
        status_code=204,
        response_class=Response,
        responses={204: {"description": "Interrupted."}, **_REFUSALS, **unknown, **invalid_id},
    )
    app.add_api_route(
        f"{path}/{{execution_id}}/resume",
        _endpoint(resume_by_id, {"execution_id": ExecutionId}),
        methods=["POST"],
        tags=["executions"],
        operation_id=f"{name}ResumeById",
        summary=f"Resume a suspended execution of {name}",
        status_code=204,
        response_class=Response,
        responses={204: {"description": "Resumed."}, **_REFUSALS, **unknown, **invalid_id},
    )
    app.add_api_route(
        f"{path}/{{execution_id}}/cancel",
        _endpoint(cancel, {"execution_id": ExecutionId}),
        methods=["POST"],
        tags=["executions"],
        operation_id=f"{name}Cancel",
        summary=f"Cancel an execution of {name} now",
        description=(
            "Interrupts it at once (Effect's interruptUnsafe): the running body is cancelled "
            "with the activity it awaits, then its compensations and finalizers run and it "
            "completes as interrupted; its child executions are interrupted too."
        ),
        status_code=204,
        response_class=Response,
        responses={204: {"description": "Cancelled."}, **_REFUSALS, **unknown, **invalid_id},
    )


def _storable(workflow: Workflow[Any, Any], payload: Any) -> str:
    """The execution id of a validated payload, once it is known to be storable.

    JSON text may hold what a payload cannot be stored as: a lone surrogate (the escape of
    U+D800 alone, say) validates as a `str` but has no UTF-8 encoding. Refused here as the
    payload's fault (422) before anything is stored, rather than failing in the engine (500).

    Raises:
        PayloadError: The payload cannot be stored.
    """
    try:
        workflow.encode_payload(payload)
        return workflow.execution_id(payload)
    except (PydanticSerializationError, InvalidArgumentError) as err:
        detail = {"type": "unstorable", "loc": [], "msg": str(err)}
        raise PayloadError(workflow.name, [detail], str(err)) from None


# Entities and the cluster ------------------------------------------------------------------


def _add_cluster_routes(app: FastAPI, served: _Served) -> None:
    engine = served.engine
    infos = [
        EntityInfo(
            name=entity.name,
            rpcs=[
                RpcInfo(
                    name=wire.rpc.name,
                    path=f"{wire.path}/{{entity_id}}",
                    persisted=wire.rpc.persisted,
                    primaryKey=wire.idempotent,
                    payload=wire.rpc.takes_payload,
                )
                for wire in served.rpcs.values()
                if wire.rpc.entity is entity
            ],
        )
        for entity in served.entities
    ]

    async def entities() -> list[EntityInfo]:
        """The entity types served, and the route of each RPC."""
        return infos

    app.add_api_route(
        "/entities",
        entities,
        methods=["GET"],
        tags=["entities"],
        operation_id="listEntities",
        summary="The entity types served and their RPCs",
        response_model=list[EntityInfo],
        responses=_REFUSALS,
    )

    async def cluster() -> ClusterStatus:
        """What the engine sees of its cluster: runners, shards, resident entities."""
        engine.require_loop()  # 503 while the engine is not running
        return _cluster_status(served)

    app.add_api_route(
        "/cluster",
        cluster,
        methods=["GET"],
        tags=["entities"],
        operation_id="clusterStatus",
        summary="The cluster: runners and their shards, entities resident here",
        description=(
            "On a runner of a cluster: every runner the ring gives shards, its shards and its "
            "resident entity instances (as of its last heartbeat), the shards this runner "
            "holds, and the entity instances resident in it by type. On a single engine "
            "`cluster` is false."
        ),
        response_model=ClusterStatus,
        responses=_REFUSALS,
    )


def _cluster_status(served: _Served) -> ClusterStatus:
    runtime = runtime_of(served.engine)
    by_type: dict[str, int] = {}
    for entity_type, _ in runtime.instances:
        by_type[entity_type] = by_type.get(entity_type, 0) + 1
    local = ClusterStatus(
        cluster=False,
        entities=sum(by_type.values()),
        entityTypes=dict(sorted(by_type.items())),
        singletons=sorted(runtime.singletons.running()),
    )
    runner = served.runner
    try:
        view = runner.view() if runner is not None else None
    except InvalidArgumentError:  # a runner on a SQLite file: one process, no cluster
        view = None
    if view is None:
        return local
    owned: dict[str, list[str]] = {}
    for shard, owner in view.assignments.items():
        owned.setdefault(owner, []).append(shard)
    assignments = [
        RunnerShards(
            address=owner,
            shards=sorted(shards, key=_shard_order),
            this=owner == view.address,
            entities=(local.entities if owner == view.address else view.runner_entities.get(owner)),
        )
        for owner, shards in sorted(owned.items())
    ]
    return local.model_copy(
        update={
            "cluster": True,
            "address": view.address or None,
            "machine_id": view.machine_id,
            "runners": view.runners,
            "healthy_runners": view.healthy_runners,
            "assignments": assignments,
            "shards": sorted(view.shards, key=_shard_order),
            "releasing": sorted(view.releasing, key=_shard_order),
            "fenced_writes": view.fenced_writes,
        }
    )


def _shard_order(shard: str) -> tuple[str, int]:
    group, _, number = shard.rpartition(":")
    return (group, int(number)) if number.isdigit() else (shard, 0)


def _add_rpc_routes(app: FastAPI, served: _Served, wire: RpcWire[Any]) -> None:
    engine = served.engine
    rpc: Rpc[Any, Any] = wire.rpc
    label = f"{rpc.entity.name}.{rpc.name}"
    route = f"{wire.path}/{{entity_id}}"
    served.rpc_routes[route] = label
    served.rpc_routes[f"{route}/discard"] = label

    async def call(entity_id: str, payload: Any = None) -> Response:
        # Raised here, before anything is sent: a payload (or primary key) refused is 422.
        reply = asyncio.ensure_future(rpc.call(entity_id, payload, engine=engine))
        try:
            # Shielded: the server stopping gives up on the wait, not on the request (a
            # cancelled wait would interrupt it, and store the interrupt as a persisted one's
            # reply). The client's retry of a persisted request gets the reply it stores.
            value = await asyncio.shield(reply)
        except asyncio.CancelledError:
            reply.add_done_callback(_retrieved)
            return _stopping()
        except MalformedMessage as error:
            # The reply, not the request: it did not decode, a defect of the call.
            kind, body = wire.cause(Defect("plait.cluster.MalformedMessage", str(error)))
            return _json(body, 500, {CAUSE_HEADER: kind})
        except Exception as error:
            if isinstance(error, EngineClosedError) or not wire.is_outcome(error):
                return _problem(error)
            kind, body = wire.cause(error)
            return _json(body, 500, {CAUSE_HEADER: kind})
        body_bytes = wire.encode_value(value)
        media = "application/json" if body_bytes else None
        return Response(body_bytes, status_code=200, media_type=media)

    async def discard(entity_id: str, payload: Any = None) -> Response:
        taken = rpc.call(entity_id, payload, discard=True, engine=engine)
        try:
            await taken
        except asyncio.CancelledError:
            return _stopping()
        return Response(status_code=204)

    params: dict[str, Any] = {"entity_id": EntityId}
    defaults: dict[str, Any] = {}
    if rpc.takes_payload:
        params["payload"] = Annotated[rpc.payload_type, Body(description="The RPC's payload.")]
    else:
        # No body, or `null`: anything else is refused, not ignored.
        params["payload"] = Annotated[None, Body(description="None: it takes no payload.")]
        defaults["payload"] = None
    refusals: dict[int | str, dict[str, Any]] = {
        **_BODY_REFUSALS,
        404: {"model": Problem, "description": "NotFoundError: no such route."},
        409: {"model": Problem, "description": "AlreadyProcessingMessage"},
        422: {
            "model": Problem,
            "description": "MalformedMessage: the payload does not validate (pydantic's "
            "details); InvalidRequestError: the entity id.",
        },
        503: {
            "model": Problem,
            "description": "MailboxFull (a volatile RPC: try again), EntityNotAssignedToRunner, "
            "RunnerUnavailable; or the engine is not running.",
        },
    }
    success: dict[str, Any] = {"description": "Its reply."}
    if wire.void:
        success["description"] = "Answered (the RPC has no reply value: no body)."
    else:
        success["model"] = wire.success_type
    if not rpc.persisted:
        delivery = "Volatile: answered in memory, never stored."
    elif wire.idempotent:
        delivery = (
            "Persisted: stored before it runs and answered once; a request with the same "
            "primary key gets the first one's reply."
        )
    else:
        delivery = "Persisted: stored before it runs and answered once."
    app.add_api_route(
        route,
        _endpoint(call, params, defaults),
        methods=["POST"],
        tags=["entities"],
        operation_id=label,
        summary=f"Call {label} on an entity instance and wait for its reply",
        description=f"Effect's EntityProxy route. {delivery}",
        response_class=Response,
        responses={
            200: success,
            **refusals,
            500: {
                "model": wire.failure_union() | Problem,
                "description": (
                    "The RPC failed: a declared error as its tagged JSON, or a defect (`Die`) "
                    "or an interruption (`Interrupt`), the Plait-Cause header saying which; or "
                    "PersistenceError (no header)."
                ),
            },
        },
    )
    app.add_api_route(
        f"{route}/discard",
        _endpoint(discard, params, defaults),
        methods=["POST"],
        tags=["entities"],
        operation_id=f"{label}Discard",
        summary=f"Send {label} to an entity instance without waiting for its reply",
        description=(
            "Effect's EntityProxy route: 204 once a mailbox took the request (a persisted one: "
            f"once stored). {delivery}"
        ),
        status_code=204,
        response_class=Response,
        responses={
            204: {"description": "Taken."},
            **refusals,
            500: {"model": Problem, "description": "PersistenceError: it could not be stored."},
        },
    )


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Reads an outcome no one waits for any more, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


def _stopping() -> Response:
    """The answer to a request the stopping server gave up on (the client calls again)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return _problem(ProxyUnavailableError("the proxy is stopping; call again"))
