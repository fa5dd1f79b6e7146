"""The `plait` command: serve the proxy, act on executions through it, migrate a database."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from plait.cli.definitions import load_definitions
from plait.cli.exit_codes import ExitCode, exit_code_of
from plait.cli.output import Output, masked_url
from plait.cluster import Runner, RunnerAddress, ShardingConfig
from plait.engine import Engine, ExecutionStatusName
from plait.http.client import DEFAULT_URL, Client
from plait.http.proxy import DEFAULT_MAX_BODY_BYTES, proxy_app
from plait.http.server import DEFAULT_HOST, check_bind, proxy_server
from plait.http.wire import DEFAULT_PORT
from plait.schedule import Schedule

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="plait",
    help=(
        "plait: durable workflows. Serve a module's workflows over HTTP, list, show and act on "
        "executions through a running proxy, migrate a database.\n\n"
        "Exit codes: 0 done; 1 failed otherwise; 2 wrong command line; 3 not found; "
        "4 proxy or database unreachable; 5 refused (token, loopback, database locked); "
        "6 input refused as invalid."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# A command line gives up sooner than a backend: three quick retries.
_CLI_RETRY = Schedule.exponential(0.1, factor=2.0, times=3)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one line of JSON (errors too) instead of text.")
]
UrlOption = Annotated[str, typer.Option("--url", envvar="PLAIT_URL", help="The proxy to talk to.")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="PLAIT_TOKEN", help="The proxy's bearer token.", show_default=False
    ),
]
WorkflowArgument = Annotated[
    str, typer.Argument(help="The workflow's name (any case: its route is in lower case).")
]
ExecutionArgument = Annotated[str, typer.Argument(help="The execution's id (32 hex digits).")]
WorkflowFilter = Annotated[
    str | None,
    typer.Option("--workflow", "-w", help="Only executions of this workflow (its exact name)."),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only executions started at or after this: ISO 8601 (local time unless it says), "
        "or a time ago such as 30m, 2h, 7d.",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until", help="Only executions started before this (as --since).", show_default=False
    ),
]

_AGO = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _instant(text: str | None, option: str) -> datetime | None:
    """An instant from the command line: ISO 8601, or a time ago (`30m`, `2h`, `7d`)."""
    if text is None:
        return None
    ago = _AGO.match(text.strip().lower())
    if ago:
        return datetime.now().astimezone() - timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        msg = f"{text!r} is neither an ISO 8601 time nor a time ago such as 30m, 2h or 7d"
        raise typer.BadParameter(msg, param_hint=option) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def _runner_address(runner: str | None, database: str) -> RunnerAddress | None:
    """The address `--runner` gives (None: client only), checked against the database."""
    if runner is None:
        return None
    if not database.startswith(("postgres://", "postgresql://")):
        msg = "a cluster's runners share a PostgreSQL database: give --database postgresql://..."
        raise typer.BadParameter(msg, param_hint="--runner")
    if runner == "client":
        return None
    host, _, port = runner.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"{runner!r} is not HOST:PORT (such as 10.0.0.5:34431) or 'client'"
        raise typer.BadParameter(msg, param_hint="--runner")
    return RunnerAddress(host=host, port=int(port))


def main() -> None:
    """The entry point of the `plait` console script."""
    app()


@contextlib.contextmanager
def _reported(output: Output) -> Iterator[None]:
    """Turns the error a command fails with into its message and its exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):  # typer reports these (exit 2)
        raise
    except Exception as error:
        _fail(output, error)


def _fail(output: Output, error: BaseException) -> NoReturn:
    output.error(error)
    raise typer.Exit(exit_code_of(error))


def _through_proxy(url: str, token: str | None, call: Callable[[Client], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Client(url, token=token, retry=_CLI_RETRY) as client:
            return await call(client)

    return asyncio.run(run())


@app.command()
def serve(
    module: Annotated[
        str,
        typer.Argument(
            help="The module (`myapp.workflows`) or file whose top-level workflows to serve."
        ),
    ],
    host: Annotated[
        str, typer.Option(help="The address to bind; beyond loopback it needs --token.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="The port (Effect's proxy uses 3020).")] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="PLAIT_TOKEN",
            help="A bearer token every request must carry (all but GET /health).",
            show_default=False,
        ),
    ] = None,
    database: Annotated[
        str,
        typer.Option(
            envvar="PLAIT_DATABASE",
            help="sqlite://<file>, postgres://user:password@host/db, or memory.",
        ),
    ] = "sqlite://plait.db",
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="The largest request body accepted (413 above).")
    ] = DEFAULT_MAX_BODY_BYTES,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
    runner: Annotated[
        str | None,
        typer.Option(
            "--runner",
            help=(
                "Join the cluster on the PostgreSQL --database as a runner reached at HOST:PORT "
                "(the entities of its shards run here; the other options from PLAIT_* "
                "variables), or as a client-only process: 'client'."
            ),
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the workflows and entities of MODULE over HTTP: Effect's routes and plait's."""
    output = Output(as_json=False)
    with _reported(output):
        check_bind(host, token)  # before anything is imported or opened
        address = _runner_address(runner, database)
        definitions = load_definitions(module)
        cluster: Runner | None = None
        if runner is not None:
            cluster = Runner(database, config=ShardingConfig(runner_address=address))
            engine = cluster.engine
        else:
            engine = Engine.memory() if database == "memory" else Engine.url(database)
        proxy = proxy_app(
            definitions.workflows,
            engine=None if cluster is not None else engine,
            runner=cluster,
            entities=definitions.entities,
            deferreds=definitions.deferreds,
            token=token,
            max_body_bytes=max_body_bytes,
        )
        server = proxy_server(proxy, host=host, port=port, log_level=log_level)
        names = ", ".join(
            [w.name for w in definitions.workflows] + [e.name for e in definitions.entities]
        )
        where = masked_url(database)
        if runner is not None:
            where = f"{where} as runner {address or 'client'}"
        output.err.print(f"plait: serving {names} from {where}", markup=False)

        async def run() -> None:
            # Opened before the server starts, so a database that cannot be opened is this
            # command's error (and exit code), not a failed server start-up.
            async with cluster if cluster is not None else engine:
                await server.serve()

        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as loop:
            try:
                loop.run(run())
            except SystemExit as stop:  # uvicorn could not start (the port is taken, say)
                output.err.print("plait: the server could not start", markup=False)
                raise typer.Exit(ExitCode.FAILED) from stop


@app.command()
def status(
    workflow: WorkflowArgument,
    execution_id: ExecutionArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show an execution's status, and its result or error once it has one."""
    output = Output(as_json=json_output)
    with _reported(output):
        found = _through_proxy(url, token, lambda c: c.status(workflow, execution_id))
        output.status(found)


@app.command()
def interrupt(
    workflow: WorkflowArgument,
    execution_id: ExecutionArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Interrupt an execution: it ends interrupted once its current run ends, compensated."""
    output = Output(as_json=json_output)
    with _reported(output):
        _through_proxy(url, token, lambda c: c.interrupt(workflow, execution_id))
        output.done(
            f"interrupted {workflow} {execution_id}",
            {"executionId": execution_id, "workflow": workflow, "interrupted": True},
        )


@app.command()
def resume(
    workflow: WorkflowArgument,
    execution_id: ExecutionArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resume a suspended execution (nothing happens to one running or complete)."""
    output = Output(as_json=json_output)
    with _reported(output):
        _through_proxy(url, token, lambda c: c.resume(workflow, execution_id))
        output.done(
            f"resumed {workflow} {execution_id}",
            {"executionId": execution_id, "workflow": workflow, "resumed": True},
        )


@app.command()
def cancel(
    workflow: WorkflowArgument,
    execution_id: ExecutionArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Cancel an execution now: its running body and the activity it awaits are cancelled.

    Then its compensations and finalizers run and it completes as interrupted, as with
    `interrupt`, which instead lets the current run go on until it next waits.
    """
    output = Output(as_json=json_output)
    with _reported(output):
        _through_proxy(url, token, lambda c: c.cancel(workflow, execution_id))
        output.done(
            f"cancelled {workflow} {execution_id}",
            {"executionId": execution_id, "workflow": workflow, "cancelled": True},
        )


@app.command("list")
def list_executions(
    workflow: WorkflowFilter = None,
    status: Annotated[
        ExecutionStatusName | None,
        typer.Option("--status", "-s", help="Only executions with this status."),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many.")
    ] = 50,
    after: Annotated[
        str | None,
        typer.Option(
            help="Go on from where a previous page ended (its `next`).", show_default=False
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the stored executions, newest first, with the count of each status.

    With --json: the page as the proxy answers it (`executions`, and `next` to pass to
    --after for the next page).
    """
    output = Output(as_json=json_output)
    with _reported(output):
        from_, to = _instant(since, "--since"), _instant(until, "--until")

        async def call(client: Client) -> tuple[Any, Any]:
            page = await client.executions(
                workflow=workflow, status=status, since=from_, until=to, limit=limit, after=after
            )
            counts = None
            if not json_output:
                counts = await client.execution_counts(workflow=workflow, since=from_, until=to)
            return page, counts

        page, counts = _through_proxy(url, token, call)
        output.executions(page, counts)


@app.command()
def show(
    execution_id: ExecutionArgument,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show an execution and its journal as a timeline.

    Its start, each activity attempt, deferreds, durable clocks, timers still to fire, and
    where it stands, each with its time.
    """
    output = Output(as_json=json_output)
    with _reported(output):
        timeline = _through_proxy(url, token, lambda c: c.timeline(execution_id))
        output.timeline(timeline)


@app.command("resume-all")
def resume_all(
    workflow: WorkflowFilter = None,
    since: SinceOption = None,
    until: UntilOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resume every suspended execution (of WORKFLOW, started in the range), with a progress bar.

    Suspended executions are those waiting on a deferred or a clock, and those a failure
    suspended (`suspend_on_failure`): each gets a new run. A complete execution, failed or
    interrupted, is final and is not resumed. Exits 1 if any could not be resumed.
    """
    output = Output(as_json=json_output)
    with _reported(output):
        from_, to = _instant(since, "--since"), _instant(until, "--until")

        async def run(client: Client) -> tuple[list[str], dict[str, str]]:
            found: list[str] = []
            after = None
            while True:
                page = await client.executions(
                    workflow=workflow,
                    status="suspended",
                    since=from_,
                    until=to,
                    limit=1000,
                    after=after,
                )
                found.extend(e.execution_id for e in page.executions)
                after = page.next
                if after is None:
                    break
            failed: dict[str, str] = {}
            with _progress(output, "resuming", len(found)) as advance:
                for execution_id in found:
                    try:
                        await client.act(execution_id, "resume")
                    except Exception as error:  # reported with the others, then exit 1
                        failed[execution_id] = f"{type(error).__name__}: {error}"
                    advance()
            return found, failed

        found, failed = _through_proxy(url, token, run)
        output.bulk("resumed", found, failed)
        if failed:
            raise typer.Exit(ExitCode.FAILED)


@contextlib.contextmanager
def _progress(output: Output, what: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar of `total` steps on stderr (none with --json); yields the step."""
    if output.as_json:
        yield lambda: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=output.err) as progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)


@app.command()
def migrate(
    database: Annotated[
        str, typer.Argument(help="sqlite://<file> or postgres://user:password@host/db.")
    ],
    prefix: Annotated[str, typer.Option(help="The prefix of plait's table names.")] = "plait_",
    json_output: JsonOption = False,
) -> None:
    """Create plait's tables in DATABASE, or bring them up to this version's schema.

    An engine opening a database does the same; this does it ahead of a deployment. It
    fails if an engine holds the database.
    """
    output = Output(as_json=json_output)
    with _reported(output):

        async def run() -> None:
            engine = Engine.url(database, prefix=prefix)
            await engine.start()  # opening the store applies the migrations it lacks
            await engine.close()

        if json_output or not output.err.is_terminal:
            asyncio.run(run())
        else:
            with output.err.status(f"migrating {masked_url(database)}"):
                asyncio.run(run())
        output.done(
            f"{masked_url(database)} is at plait's current schema (prefix {prefix})",
            {"database": masked_url(database), "prefix": prefix, "migrated": True},
        )
