"""The web dashboard the proxy serves at `/dashboard`: executions, their timelines, the cluster.

One HTML page, a stylesheet and a script of plain JavaScript, shipped in this package (no
build step): the page asks the proxy's own routes (`/executions`, `/executions/counts`,
`/executions/<id>` and its actions, `/cluster`) and draws what they answer.

- `/dashboard`: the executions, newest first, filtered by workflow, status and start time (the
  filters live in the URL's query, so a view can be linked to), with the count of each status;
  a search box opens an execution by id; "More" loads the next page.
- `/dashboard/executions/<id>`: one execution, its payload and result or error, its journal as
  a timeline (start, activity attempts, deferreds, clocks, timers still to fire, the end), and
  interrupt, cancel and resume buttons while it is not complete.
- `/dashboard/cluster`: on a runner of a cluster, the runners the ring gives shards, each with
  its shards, this runner's resident entities by type and its singletons, redrawn every two
  seconds; on a single engine it says there is no cluster, and shows the engine's entities.

The page and its files hold no data, so they are served without the proxy's token; the data
routes they call need it as every route does. With a token, the page asks for it once and
keeps it for the browser tab (`sessionStorage`). Every value is drawn as text, never as HTML,
and a Content-Security-Policy allows only the page's own script and stylesheet.
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Path, Request
from fastapi.responses import Response

__all__ = ["DASHBOARD_PATH", "add_dashboard"]

#: Where the dashboard is served, under the proxy's root.
DASHBOARD_PATH = "/dashboard"

_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def add_dashboard(app: FastAPI) -> None:
    """Adds the dashboard's routes to the proxy `app`.

    They serve only the page and its files; the page reads the executions through the
    proxy's own routes.
    """
    files = {name: (_read(name), media) for name, media in _FILES.items()}

    def serve(name: str) -> Response:
        body, media = files[name]
        return Response(body, media_type=media, headers=_HEADERS)

    def page_for(request: Request) -> Response:
        # Where the proxy is mounted (`app.mount("/workflows", proxy)`): the page's links and
        # the script's requests start there.
        root = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
        body = files["index.html"][0].replace(b"__ROOT__", root.encode())
        return Response(body, media_type=_FILES["index.html"], headers=_HEADERS)

    async def page(request: Request) -> Response:
        return page_for(request)

    async def execution_page(
        request: Request,
        execution_id: Annotated[str, Path(pattern=r"^[0-9A-Za-z_-]{1,64}$")],
    ) -> Response:
        del execution_id  # the script reads it from the URL
        return page_for(request)

    async def script() -> Response:
        return serve("app.js")

    async def stylesheet() -> Response:
        return serve("app.css")

    for path, endpoint in (
        (DASHBOARD_PATH, page),
        (f"{DASHBOARD_PATH}/", page),
        (f"{DASHBOARD_PATH}/cluster", page),
        (f"{DASHBOARD_PATH}/executions/{{execution_id}}", execution_page),
        (f"{DASHBOARD_PATH}/app.js", script),
        (f"{DASHBOARD_PATH}/app.css", stylesheet),
    ):
        app.add_api_route(
            path, endpoint, methods=["GET"], include_in_schema=False, response_class=Response
        )
