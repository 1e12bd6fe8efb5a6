"""The studio's web app: server-rendered pages over the runs folder, the registry and the log.

Pages are Jinja2 templates rendered here (autoescaped: every text from a run, a data file or a
reviewer is escaped); a few hundred lines of plain JavaScript in static/studio.js add the live
loss curve (server-sent events from metrics.jsonl), the example filters and the review keys.
Every asset ships in the package, so the studio works with no network at all.

Forms are posted url-encoded and parsed with the standard library, so the studio needs no
multipart package. Path parameters go through `studio.paths`, so no URL reaches outside the
runs folder or the data folder.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from specialize import format as fmt
from specialize.config import RunConfig, save_config
from specialize.data.checks import check_files
from specialize.data.formats import FormatSpec
from specialize.errors import SpecializeError
from specialize.records.drift import DriftReport
from specialize.review.export import export_judgments
from specialize.review.items import log_source, run_source
from specialize.review.session import ReviewSession
from specialize.review.store import STORE_NAME, ReviewStore, check_reviewer
from specialize.review.summary import update_run_summary
from specialize.run_dir import RunDir
from specialize.studio.jobs import Jobs
from specialize.studio.newrun import DATA_SUFFIXES, SETTINGS, data_files, settings_form
from specialize.studio.paths import inside, run_path
from specialize.studio.playground import Playground
from specialize.studio.runs import list_runs, read_metrics, status_of, view_run
from specialize.studio.settings import StudioSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
TOKEN_COOKIE = "studio_token"
REVIEWER_COOKIE = "studio_reviewer"
VERDICT_KEYS = {"1": "first", "2": "second", "t": "tie", "b": "both_bad"}


async def form_data(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def create_app(settings: StudioSettings) -> FastAPI:
    app = FastAPI(title="specialize studio", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["num"] = lambda v, d=3: fmt.number(v, d)
    templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    templates.env.filters["q"] = lambda v: quote(str(v), safe="")
    jobs = Jobs(settings.runs, settings.python)
    playground = Playground()
    store = ReviewStore(settings.runs / STORE_NAME)
    app.state.settings, app.state.jobs, app.state.store = settings, jobs, store
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        # A page of another site must not start training or record judgments through the
        # user's browser (on loopback there is no token to stop it): refuse cross-origin writes.
        origin = request.headers.get("origin")
        if (
            request.method not in ("GET", "HEAD")
            and origin
            and urlsplit(origin).netloc != request.headers.get("host")
        ):
            return Response("studio: cross-origin request refused\n", 403, media_type="text/plain")
        if settings.token is None or request.url.path.startswith("/static/"):
            return await call_next(request)
        given = (
            request.headers.get("x-studio-token")
            or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            or request.cookies.get(TOKEN_COOKIE)
            or request.query_params.get("token")
        )
        if not given or not hmac.compare_digest(given, settings.token):
            return Response(
                "studio: a token is required (open the address printed at start)\n",
                401,
                media_type="text/plain",
            )
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(SpecializeError)
    async def user_error(request: Request, exc: SpecializeError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, 400)
        return page(request, "error.html", {"message": str(exc)}, status=400)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        base = {"runs_dir": settings.runs, "nav": name.split(".")[0]}
        return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)

    # ------------------------------------------------------------------------------------- runs

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request):
        return page(request, "runs.html", {"runs": list_runs(settings.runs, jobs)})

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(request: Request, name: str):
        path = run_path(settings.runs, name)
        view = view_run(path, jobs)
        job = jobs.get(name)
        points = [p.to_json() for p in view.metrics]
        return page(request, "run.html", {"v": view, "name": name, "job": job, "points": json.dumps(points)})

    @app.get("/runs/{name}/metrics/stream")
    async def metrics_stream(request: Request, name: str):
        run = RunDir(run_path(settings.runs, name))

        async def events() -> AsyncIterator[str]:
            offset = 0
            while True:
                if offset and (not run.metrics.is_file() or run.metrics.stat().st_size < offset):
                    # A resumed run rewrites metrics.jsonl without the steps after its checkpoint.
                    offset = 0
                    yield "event: reset\ndata: {}\n\n"
                points, offset = read_metrics(run.metrics, offset)
                for p in points:
                    yield f"data: {json.dumps(p.to_json())}\n\n"
                if status_of(run, jobs) != "running":
                    yield f"event: done\ndata: {json.dumps(status_of(run, jobs))}\n\n"
                    return
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                await asyncio.sleep(1.0)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/runs/{name}/cancel")
    def cancel(name: str):
        run_path(settings.runs, name)
        jobs.cancel(name)
        return RedirectResponse(f"/runs/{quote(name)}", 303)

    @app.post("/runs/{name}/resume")
    def resume(name: str):
        run = RunDir(run_path(settings.runs, name))
        if run.finished:
            raise HTTPException(409, f"run {name!r} has finished; start a new run instead")
        jobs.start(name, run.config_file, resume=True)
        return RedirectResponse(f"/runs/{quote(name)}", 303)

    # ---------------------------------------------------------------------------------- new run

    @app.get("/new", response_class=HTMLResponse)
    def new_page(request: Request, data: str = "", input_field: str = "", output_field: str = ""):
        defaults = RunConfig()
        defaults.data.input_field, defaults.data.output_field = input_field or None, output_field or None
        context: dict[str, Any] = {
            "files": data_files(settings.data, settings.runs),
            "chosen": data,
            "fields": settings_form(defaults),
            "report": None,
            "problem": "",
            "input_field": input_field,
            "output_field": output_field,
        }
        if data:
            path = inside(settings.data, data)
            if not path.is_file() or path.suffix not in DATA_SUFFIXES:
                raise HTTPException(404, f"{data!r}: no such data file")
            # The checks of `specialize check` without a tokenizer (api.check_data with model=None
            # calls the same): token counts and the time estimate would load torch and a model,
            # seconds to minutes before the page could answer.
            try:
                spec = FormatSpec(input_field=input_field or None, output_field=output_field or None)
                context["report"] = check_files(path, spec)
            except SpecializeError as exc:
                context["problem"] = str(exc)
        return page(request, "new.html", context)

    @app.post("/new")
    async def start_run(request: Request):
        form = await form_data(request)
        data = inside(settings.data, form.get("data", ""))
        name = form.get("name", "").strip()
        if not name or "/" in name or name.startswith(".") or len(name) > 100:
            raise SpecializeError(f"run name {name!r}: give a folder name (letters, digits, - and _)")
        target = inside(settings.runs, name)
        if target.exists():
            raise SpecializeError(f"{target}: a run of that name exists; pick another name or resume it")
        values: dict[str, Any] = {"data.train": str(data)}
        for setting in SETTINGS:
            raw = form.get(setting, "").strip()
            if raw:
                values[setting] = raw
        from specialize.api import resolve_run_config

        config = resolve_run_config(None, values, name=name)
        config_file = jobs.config_file(name)
        save_config(config, config_file)
        jobs.start(name, config_file)
        return RedirectResponse(f"/runs/{quote(name)}", 303)

    # ---------------------------------------------------------------------------------- adapters

    @app.get("/adapters", response_class=HTMLResponse)
    def adapters_page(request: Request):
        from specialize.registry.store import AdapterRegistry

        problem, adapters, latest = "", [], {}
        try:
            registry = AdapterRegistry(settings.registry)
            adapters = registry.list(all_versions=True)
            where = registry.root
            # The version `model: NAME` serves: the registry's current pointer (promote / rollback).
            latest = {a.name: a.version for a in registry.current_all()}
        except Exception as exc:
            problem, where = str(exc), settings.registry
        return page(
            request,
            "adapters.html",
            {"adapters": adapters, "latest": latest, "problem": problem, "where": where},
        )

    # -------------------------------------------------------------------------------- playground

    def playable() -> list[str]:
        return [r.name for r in list_runs(settings.runs, jobs) if r.status == "finished" and not r.problem]

    @app.get("/playground", response_class=HTMLResponse)
    def playground_page(request: Request):
        return page(request, "playground.html", {"runs": playable()})

    @app.post("/api/playground")
    async def playground_reply(request: Request):
        body = await request.json()
        path = run_path(settings.runs, str(body.get("run", "")))
        text = str(body.get("text", ""))
        if not text.strip():
            raise SpecializeError("type a message first")
        reply = await asyncio.to_thread(
            playground.reply,
            path,
            text,
            use_base=body.get("model") == "base",
            free=bool(body.get("free")),
            max_new_tokens=min(int(body.get("max_new_tokens") or 64), 512),
        )
        return JSONResponse(reply.__dict__)

    # ------------------------------------------------------------------------------------- drift

    @app.get("/drift", response_class=HTMLResponse)
    def drift_page(request: Request):
        reports = []
        for summary in list_runs(settings.runs, jobs):
            path = settings.runs / summary.name / "drift" / "drift.json"
            if path.is_file():
                try:
                    reports.append((summary.name, DriftReport.model_validate_json(path.read_bytes()), ""))
                except Exception as exc:
                    reports.append((summary.name, None, f"{path}: not a readable drift report ({exc})"))
        return page(request, "drift.html", {"reports": reports})

    # ------------------------------------------------------------------------------------ review

    def reviewer_of(request: Request) -> str | None:
        name = request.query_params.get("reviewer") or request.cookies.get(REVIEWER_COOKIE)
        return check_reviewer(name) if name else None

    @app.get("/review", response_class=HTMLResponse)
    def review_index(request: Request):
        runs = [r for r in list_runs(settings.runs, jobs) if r.evaluated and not r.problem]
        context = {
            "runs": runs,
            "chosen": request.query_params.get("run", ""),
            "reviewer": reviewer_of(request) or "",
            "log": settings.request_log,
        }
        return page(request, "review_index.html", context)

    def review_target(name: str | None) -> tuple[str, RunDir | None, str]:
        """(source, run, base URL) of a run's review, or of the request log's when name is None."""
        if name is None:
            if settings.request_log is None:
                raise HTTPException(404, "no request log: start the studio with --request-log PATH")
            return log_source(settings.request_log), None, "/review-traffic"
        run = RunDir(run_path(settings.runs, name))
        return run_source(run), run, f"/review/{quote(name)}"

    def show_pair(request: Request, name: str | None):
        source, run, base = review_target(name)
        reviewer = reviewer_of(request)
        if reviewer is None:
            return RedirectResponse("/review", 303)
        session = ReviewSession(store, source)
        context = {
            "name": name or "recent traffic",
            "run": name,
            "base": base,
            "reviewer": reviewer,
            "shown": session.next(reviewer),
            "progress": session.progress(reviewer),
            "human": run.human_eval() if run else None,
        }
        response = page(request, "review.html", context)
        response.set_cookie(REVIEWER_COOKIE, reviewer, samesite="strict")
        return response

    async def answer(request: Request, name: str | None):
        source, run, base = review_target(name)
        form = await form_data(request)
        verdict = VERDICT_KEYS.get(form.get("verdict", ""), form.get("verdict", ""))
        judged = ReviewSession(store, source).answer(
            form.get("token", ""), verdict, form.get("corrected") or None
        )
        if run is not None:
            update_run_summary(store, run)
        return RedirectResponse(f"{base}?reviewer={quote(judged.reviewer)}", 303)

    def export(request: Request, name: str | None):
        source, run, base = review_target(name)
        out = settings.runs / ".studio" / "review-export" / (name or "traffic")
        result = export_judgments(store.judgments(source=source), out)
        if run is not None:
            update_run_summary(store, run)
        context = {
            "name": name or "recent traffic",
            "run": name,
            "base": base,
            "result": result,
            "reviewer": reviewer_of(request) or "",
        }
        return page(request, "review_export.html", context)

    @app.get("/review/{name}", response_class=HTMLResponse)
    def review_page(request: Request, name: str):
        return show_pair(request, name)

    @app.post("/review/{name}")
    async def review_answer(request: Request, name: str):
        return await answer(request, name)

    @app.post("/review/{name}/export", response_class=HTMLResponse)
    def review_export(request: Request, name: str):
        return export(request, name)

    @app.get("/review-traffic", response_class=HTMLResponse)
    def traffic_page(request: Request):
        return show_pair(request, None)

    @app.post("/review-traffic")
    async def traffic_answer(request: Request):
        return await answer(request, None)

    @app.post("/review-traffic/export", response_class=HTMLResponse)
    def traffic_export(request: Request):
        return export(request, None)

    return app
