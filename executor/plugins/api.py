"""The dashboard's FastAPI app, mounted by Airflow's api-server under ``/edge-mailbox``:

- ``/ui/``: the page (plain HTML, JS and CSS from ``www/``, shown in Airflow's Admin menu);
- ``/api/...``: the same data as JSON, and the actions (one worker, or many at once);
- ``/docs``, ``/openapi.json``: the API's documentation.

Every route, the page and the docs included, asks Airflow's auth manager (auth.py): an
anonymous request gets 401, a user without the right 403. Actions go through FleetControl,
the one writer of worker commands, as the CLI's do; the Airflow user's name becomes the
command's ``issued_by`` and signs the maintenance comment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from fastapi import FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from edge_mailbox.executor.fleet_control import Change, FleetError
from edge_mailbox.executor.fleet_view import (
    DISPLAY_STATES,
    OTHER_PRICE_PER_1000,
    Fleet,
    filter_jobs,
    filter_workers,
    usd,
)
from edge_mailbox.executor.fleet_view import HOURS_PER_MONTH as MONTH
from edge_mailbox.executor.plugins.auth import Actor, Reader, may_act
from edge_mailbox.executor.plugins.context import ConfigProblem, ContextHolder, FleetContext
from edge_mailbox.executor.plugins.schemas import (
    ActionResult,
    BulkConcurrency,
    BulkMaintenance,
    BulkQueues,
    BulkResult,
    BulkWorkers,
    CommandOut,
    ConcurrencyBody,
    CostOut,
    CostTotal,
    FleetOut,
    JobsOut,
    MaintenanceBody,
    Me,
    QueuesBody,
    QueuesOut,
    WorkersOut,
)
from edge_mailbox.mailbox.accounting import PRICE_PER_1000
from edge_mailbox.mailbox.errors import StoreError

URL_PREFIX = "/edge-mailbox"
WWW = Path(__file__).parent / "www"
# The page's files: served by name from this list only.
STATIC = {
    "index.html": "text/html",
    "fleet.js": "text/javascript",
    "fleet.css": "text/css",
    "icon.svg": "image/svg+xml",
    "icon-dark.svg": "image/svg+xml",
}
HOLDER = ContextHolder()

StateFilter = Annotated[list[str] | None, Query(description=f"any of: {', '.join(DISPLAY_STATES)}")]


class _Refused(Exception):
    """An action refused for one worker, with the status its route answers."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def create_fleet_app() -> FastAPI:
    app = FastAPI(
        title="edge-mailbox fleet",
        description=(
            "The edge-mailbox fleet dashboard's API: the workers (from one LIST of their "
            "heartbeats and the schedulers' signed fleet snapshots), queues, recent jobs and "
            "bucket request costs, and the actions that write signed commands for workers. "
            "Authenticated by Airflow (its token cookie or ``Authorization: Bearer``); "
            "reading needs access to the Jobs view, acting also the right to edit pools."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ConfigProblem, _config_problem)
    app.add_exception_handler(StoreError, _store_error)
    _pages(app)
    _reads(app)
    _actions(app)
    return app


# -- the page and the docs ------------------------------------------------------------------


def _pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root(request: Request, user: Reader) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/")

    @app.get("/ui/", include_in_schema=False)
    def page(user: Reader) -> FileResponse:
        return _static("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    def static(name: str, user: Reader) -> FileResponse:
        if name not in STATIC:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no file {name!r}")
        return _static(name)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request, user: Reader) -> HTMLResponse:
        root_path = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root_path}/openapi.json", title=app.title)


def _static(name: str) -> FileResponse:
    return FileResponse(WWW / name, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


# -- reading --------------------------------------------------------------------------------


def _context() -> FleetContext:
    return HOLDER.get()


def _fleet() -> Fleet:
    return _context().fleet()


def _listing(fleet: Fleet) -> dict:
    return {
        "generated_at": fleet.generated_at,
        "problems": fleet.problems,
        "snapshots": fleet.snapshots,
    }


def _cost(fleet: Fleet) -> CostOut:
    totals: dict[str, float] = {}
    for row in fleet.cost:
        for kind, rate in row.requests_per_hour.items():
            totals[kind] = totals.get(kind, 0.0) + rate
    per_hour = usd(totals)
    return CostOut(
        **_listing(fleet),
        rows=fleet.cost,
        total=CostTotal(
            requests_per_hour=totals, usd_per_hour=per_hour, usd_per_month=per_hour * MONTH
        ),
        usd_per_1000=PRICE_PER_1000,
        other_usd_per_1000=OTHER_PRICE_PER_1000,
    )


def _check_states(states: list[str] | None) -> list[str]:
    unknown = [s for s in states or [] if s not in DISPLAY_STATES]
    if unknown:
        raise HTTPException(
            422,
            f"unknown state {unknown[0]!r}: one of {', '.join(DISPLAY_STATES)}",
        )
    return states or []


def _reads(app: FastAPI) -> None:
    @app.get("/api/me", tags=["read"])
    def me(user: Reader) -> Me:
        """Who is asking, and whether they may act (the page greys its buttons out if not)."""
        return Me(user=user.get_name(), can_act=may_act(get_auth_manager(), user))

    @app.get("/api/workers", tags=["read"])
    def workers(
        user: Reader,
        search: Annotated[str | None, Query(description="part of the name")] = None,
        queue: Annotated[str | None, Query(description="serving this queue")] = None,
        state: StateFilter = None,
    ) -> WorkersOut:
        """Workers: liveness from one LIST of heartbeats, details from the snapshots."""
        states = _check_states(state)
        fleet = _fleet()
        rows = filter_workers(fleet.workers, search, queue, states)
        return WorkersOut(**_listing(fleet), workers=rows, total_entries=len(rows))

    @app.get("/api/queues", tags=["read"])
    def queues(user: Reader) -> QueuesOut:
        """Pending jobs per queue, the age of the oldest, the workers serving each."""
        fleet = _fleet()
        return QueuesOut(**_listing(fleet), queues=fleet.queues)

    @app.get("/api/jobs", tags=["read"])
    def jobs(
        user: Reader,
        search: Annotated[str | None, Query(description="in dag, run, task or job id")] = None,
        queue: str | None = None,
        worker: str | None = None,
        state: Annotated[list[str] | None, Query(description="queued, running, ...")] = None,
        limit: Annotated[int, Query(ge=1, le=2000)] = 500,
    ) -> JobsOut:
        """Recent jobs of every scheduler (those of the last hour and all unfinished)."""
        fleet = _fleet()
        rows = filter_jobs(fleet.jobs, search, queue, worker, state or [], limit)
        return JobsOut(**_listing(fleet), jobs=rows, total_entries=len(rows))

    @app.get("/api/cost", tags=["read"])
    def cost(user: Reader) -> CostOut:
        """Bucket requests per hour by kind and side, and their price on S3 Standard."""
        return _cost(_fleet())

    @app.get("/api/fleet", tags=["read"])
    def fleet(
        user: Reader,
        search: str | None = None,
        queue: str | None = None,
        state: StateFilter = None,
    ) -> FleetOut:
        """All four tables in one answer: what the page asks for at each refresh."""
        states = _check_states(state)
        fleet = _fleet()
        return FleetOut(
            **_listing(fleet),
            workers=filter_workers(fleet.workers, search, queue, states),
            queues=fleet.queues,
            jobs=fleet.jobs,
            cost=_cost(fleet),
            requests=fleet.requests,
        )


# -- acting ---------------------------------------------------------------------------------


def _act(worker: str, user: str, change: Change | None) -> ActionResult:
    """One worker's action (``None``: forget it); _Refused says why it was not done."""
    control = _context().control()
    try:
        now = control.now(worker)
        if now.heartbeat is None and now.command is None:
            raise _Refused(
                status.HTTP_404_NOT_FOUND,
                f"worker {worker!r} is not known (no verified heartbeat and no command)",
            )
        if change is None:
            control.forget(worker)
            return ActionResult(worker=worker, ok=True)
        command = control.send(worker, user, change)
    except FleetError as exc:
        raise _Refused(status.HTTP_409_CONFLICT, str(exc)) from None
    except StoreError as exc:
        raise _Refused(status.HTTP_502_BAD_GATEWAY, f"the bucket: {exc}") from None
    return ActionResult(worker=worker, ok=True, command=CommandOut(**command.model_dump()))


def _one(worker: str, user: str, change: Change | None) -> ActionResult:
    try:
        return _act(worker, user, change)
    except _Refused as exc:
        raise HTTPException(exc.status_code, exc.detail) from None


def _bulk(workers: list[str], user: str, change: Change | None) -> BulkResult:
    results = []
    for worker in dict.fromkeys(workers):
        try:
            results.append(_act(worker, user, change))
        except _Refused as exc:
            results.append(
                ActionResult(worker=worker, ok=False, error=exc.detail, status=exc.status_code)
            )
    ok = sum(r.ok for r in results)
    return BulkResult(results=results, succeeded=ok, failed=len(results) - ok)


def _maintenance(body: MaintenanceBody) -> Change:
    return Change(maintenance=body.on, comment=body.comment if body.on else None)


def _queues(body: QueuesBody) -> Change:
    chosen = tuple(q.strip() for q in body.queues)
    if body.mode == "set":
        return Change(queues=chosen)
    if body.mode == "add":
        return Change(add_queues=chosen)
    return Change(remove_queues=chosen)


SHUTDOWN = Change(shutdown=True)


def _actions(app: FastAPI) -> None:
    refused = {
        404: {"description": "no such worker"},
        409: {"description": "refused: the detail says why"},
    }

    @app.post("/api/workers/{worker}/maintenance", tags=["act"], responses=refused)
    def maintenance(worker: str, body: MaintenanceBody, user: Actor) -> ActionResult:
        """Enter maintenance (running tasks finish, no new ones) or leave it."""
        return _one(worker, user.get_name(), _maintenance(body))

    @app.post("/api/workers/{worker}/shutdown", tags=["act"], responses=refused)
    def shutdown(worker: str, user: Actor) -> ActionResult:
        """Stop the worker once its running tasks have finished."""
        return _one(worker, user.get_name(), SHUTDOWN)

    @app.post("/api/workers/{worker}/queues", tags=["act"], responses=refused)
    def queues(worker: str, body: QueuesBody, user: Actor) -> ActionResult:
        """Change the queues the worker serves (it must keep at least one)."""
        return _one(worker, user.get_name(), _queues(body))

    @app.post("/api/workers/{worker}/concurrency", tags=["act"], responses=refused)
    def concurrency(worker: str, body: ConcurrencyBody, user: Actor) -> ActionResult:
        """Set how many tasks the worker runs at once."""
        return _one(worker, user.get_name(), Change(concurrency=body.concurrency))

    @app.post("/api/workers/{worker}/forget", tags=["act"], responses=refused)
    def forget(worker: str, user: Actor) -> ActionResult:
        """Remove a gone worker's heartbeat and command (refused while it is alive)."""
        return _one(worker, user.get_name(), None)

    @app.post("/api/bulk/maintenance", tags=["act in bulk"])
    def bulk_maintenance(body: BulkMaintenance, user: Actor) -> BulkResult:
        """Maintenance on or off for each worker listed; each result says how it went."""
        return _bulk(body.workers, user.get_name(), _maintenance(body))

    @app.post("/api/bulk/shutdown", tags=["act in bulk"])
    def bulk_shutdown(body: BulkWorkers, user: Actor) -> BulkResult:
        return _bulk(body.workers, user.get_name(), SHUTDOWN)

    @app.post("/api/bulk/queues", tags=["act in bulk"])
    def bulk_queues(body: BulkQueues, user: Actor) -> BulkResult:
        return _bulk(body.workers, user.get_name(), _queues(body))

    @app.post("/api/bulk/concurrency", tags=["act in bulk"])
    def bulk_concurrency(body: BulkConcurrency, user: Actor) -> BulkResult:
        return _bulk(body.workers, user.get_name(), Change(concurrency=body.concurrency))

    @app.post("/api/bulk/forget", tags=["act in bulk"])
    def bulk_forget(body: BulkWorkers, user: Actor) -> BulkResult:
        return _bulk(body.workers, user.get_name(), None)


# -- errors ---------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    """An anonymous browser asking for the page is sent to Airflow's login, and back."""
    assert isinstance(exc, HTTPException)
    page = request.url.path.rstrip("/").endswith(("/ui", URL_PREFIX, "/docs"))
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and page:
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    return await http_exception_handler(request, exc)


async def _config_problem(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"detail": f"edge-mailbox is not set up on this api-server: {exc}"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


async def _store_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"detail": f"the bucket did not answer as it should: {exc}"},
        status_code=status.HTTP_502_BAD_GATEWAY,
    )
