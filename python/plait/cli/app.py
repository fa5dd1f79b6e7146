"""The `plait` command: serve the proxy, act on executions through it, migrate a database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, NoReturn, TypeVar

import typer

from plait.cli.definitions import load_definitions
from plait.cli.exit_codes import ExitCode, exit_code_of
from plait.cli.output import Output, masked_url
from plait.engine import Engine
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
        "plait: durable workflows. Serve a module's workflows over HTTP, look at and act on "
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


def main() -> None:
    """The entry point of the `plait` console script."""
    app()


@contextlib.contextmanager
def _reported(output: Output) -> Iterator[None]:
    """Turns the error a command fails with into its message and its exit code."""
    try:
        yield
    except (typer.Exit, typer.Abort):
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
) -> None:
    """Serve the workflows of MODULE over HTTP: Effect's routes and plait's, on PORT."""
    output = Output(as_json=False)
    with _reported(output):
        check_bind(host, token)  # before anything is imported or opened
        definitions = load_definitions(module)
        engine = Engine.memory() if database == "memory" else Engine.url(database)
        proxy = proxy_app(
            definitions.workflows,
            engine=engine,
            deferreds=definitions.deferreds,
            token=token,
            max_body_bytes=max_body_bytes,
        )
        server = proxy_server(proxy, host=host, port=port, log_level=log_level)
        names = ", ".join(w.name for w in definitions.workflows)
        output.err.print(f"plait: serving {names} from {masked_url(database)}", markup=False)

        async def run() -> None:
            # Opened before the server starts, so a database that cannot be opened is this
            # command's error (and exit code), not a failed server start-up.
            async with engine:
                await server.serve()

        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            try:
                runner.run(run())
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
