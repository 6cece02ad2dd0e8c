"""The dashboard's routes: four HTML pages, a JSON API with the CLI's `--json` field names, and
/healthz. Every route is GET (HEAD too); the one POST, /login, only sets the login cookie.

Safety: Jinja2 autoescapes every value; a Content-Security-Policy allows only this server's
own script and stylesheet (so even markup that slipped through could not run); without a token
only loopback Host headers are served (a DNS-rebinding page cannot read the dashboard); with a
token every route but /healthz, /login and /static needs it, as a bearer header or the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cronpy import reads
from cronpy.durations import format_duration, parse_since
from cronpy.errors import HistoryError, RunNotFound
from cronpy.models import RunRecord, RunStatus
from cronpy.web import charts
from cronpy.redact import redact_text, redact_url
from cronpy.web.data import PAGE, Dashboard, JobRow, Now, shown_path

HERE = Path(__file__).parent
COOKIE = "cronpy_web"
#: Seconds between live refreshes: /now and a running run within the "failure on Now in 2 s"
#: promise; the jobs and job pages less often (each render reads ~50 index walks).
LIVE_FAST = 1
LIVE_SLOW = 5
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: Bytes of a kept whole output shown on a run's page (the rest: /runs/ID/output).
KEPT_SHOWN = 1024 * 1024
SORTS = ("name", "next", "last", "status", "rate")
STATES = [s.value for s in RunStatus] + ["paused", "disabled", "never"]
WINDOWS = {"1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days"}
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for a loopback address or name (what `--host` may bind without a token)."""
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host part of a Host header ("[::1]:8080" → "::1")."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


# -- formatting (the templates' filters) --------------------------------------------------------

def _ts(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "–"


def _short(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%m-%d %H:%M") if dt else "–"


def _iso(dt: datetime | None) -> str:
    return dt.isoformat() if dt else ""


def _dur(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "–"


def _relative(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return ""
    delta = (dt - now).total_seconds()
    if abs(delta) < 1:
        return "now"
    text = format_duration(float(round(abs(delta)))) if abs(delta) < 60 else format_duration(abs(delta))
    text = text.replace(".0s", "s")
    return f"in {text}" if delta > 0 else f"{text} ago"


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1%}"


def _command(spec: Any) -> str:
    """The job's command as the definition shows it, URL secrets masked (`curl https://u:pw@…`)."""
    if spec.python:
        return spec.python
    if isinstance(spec.command, tuple):
        return redact_text(" ".join(spec.command))
    return redact_text(spec.command or "")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(ts=_ts, short=_short, iso=_iso, dur=_dur, pct=_pct, command=_command,
                       url=lambda s: quote(str(s), safe=""), redact=redact_url,
                       secret=lambda s: redact_text(str(s)))
    return env


# -- the JSON of the CLI's --json outputs --------------------------------------------------------

def job_json(row: JobRow) -> dict[str, Any]:
    """A job as `cronpy list --json` prints it, merged with its `cronpy stats --json` fields."""
    spec, s = row.spec, row.stats
    return {
        "job": row.name,
        "schedule": spec.schedule.text if spec and spec.schedule else None,
        "schedule_in_words": row.words, "timezone": spec.timezone if spec else None,
        "enabled": spec.enabled if spec else None, "paused": row.paused_since is not None,
        "kind": spec.kind if spec else None, "description": spec.description if spec else None,
        "next_run": _iso(row.next_run) or None,
        "last_status": row.last.status.value if row.last else None,
        # The fields of `cronpy stats --json`, computed by the same code (runs after retries, health).
        **{k: v for k, v in reads.job_health(row.name, s or reads.never_ran(row.name), row.window)
           .to_json(row.next_run).items() if k not in ("job", "next_run", "last_status")},
        "in_jobs_file": spec is not None,
    }


def status_json(now: Now, at: datetime) -> dict[str, Any]:
    """`cronpy status --json`."""
    sch = now.scheduler
    return {
        "state_dir": str(now.state_dir),
        "scheduler": None if sch is None else {
            "pid": sch["pid"], "host": sch["host"], "since": _iso(sch["since"]) or None, "epoch": sch["epoch"]},
        "store": None if now.store is None else {
            "location": now.store, "error": now.store_error, "fleet": now.fleet, "this_host": now.this_host},
        "next": [{"job": job, "at": t.isoformat(), "trigger": "schedule"} for job, t in now.next_due],
        "running": [dict(r.to_json(with_output=False), elapsed=(at - r.started_at).total_seconds())
                    for r in now.running if r.started_at],
        "paused": {job: since.isoformat() for job, since in now.paused.items()},
        "latest_failures": [r.to_json(with_output=False) for r in now.failures],
    }


# -- request parameters --------------------------------------------------------------------------

def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _status_param(value: str | None) -> RunStatus | None:
    if not value:
        return None
    try:
        return RunStatus(value)
    except ValueError:
        raise _bad(f"status: expected one of {', '.join(s.value for s in RunStatus)}, got {value!r}") from None


def _since_param(value: str | None, now: datetime) -> datetime | None:
    if not value or value == "all":
        return None
    try:
        return parse_since(value, now)
    except ValueError as exc:
        raise _bad(f"since: {exc}") from None


def _int_param(value: str | None, name: str, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise _bad(f"{name}: expected a whole number, got {value!r}") from None
    if not lo <= n <= hi:
        raise _bad(f"{name}: expected {lo} to {hi}, got {n}")
    return n


# -- the application -----------------------------------------------------------------------------

def create_app(dash: Dashboard, *, token: str | None = None, loopback_only: bool = True) -> Starlette:
    """The ASGI app over `dash`. `token`: required from every client; without it, only Host
    headers naming a loopback address are served (`loopback_only`)."""
    env = _env()
    for template in ("jobs.html", "job.html", "run.html", "now.html"):
        env.get_template(template)  # compile now, not in the first request
    session = hmac.new(token.encode(), b"cronpy web login", hashlib.sha256).hexdigest() if token else None

    def page(request: Request, template: str, status_code: int = 200, *, public: bool = False,
             **ctx: Any) -> HTMLResponse:
        """Render a page; a `public` one (the login form) names no file, store or job."""
        now = dash.clock.now()
        about: dict[str, Any] = dict(config_error=None, store_error=None, no_history=False, location="", jobs_file="")
        if not public:
            about = dict(config_error=dash.config_error, store_error=dash.store_error, no_history=dash.no_history,
                         location=dash.location, jobs_file=shown_path(dash.path))
        html = env.get_template(template).render(request=request, now=now, rel=lambda dt: _relative(dt, now),
                                                 zone=now.astimezone().tzname(), **about, **ctx)
        return HTMLResponse(html, status_code)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return session is not None and hmac.compare_digest(cookie.encode(), session.encode())

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if loopback_only and token is None and not is_loopback(_host_name(request.headers.get("host", ""))):
            response: Response = PlainTextResponse("This dashboard answers only to a loopback Host.", 421)
        elif not authorized(request) and request.url.path not in ("/healthz", "/login") \
                and not request.url.path.startswith("/static/"):
            if request.url.path.startswith("/api/"):
                response = JSONResponse({"error": "a token is required (Authorization: Bearer …)"}, 401,
                                        headers={"WWW-Authenticate": 'Bearer realm="cronpy"'})
            else:
                response = page(request, "login.html", 401, public=True,
                                next=_next_url(request.url.path, request.url.query), wrong=False)
                response.headers["WWW-Authenticate"] = 'Bearer realm="cronpy"'
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # -- pages --

    def jobs_page(request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        state = request.query_params.get("status", "")
        sort = request.query_params.get("sort", "name")
        desc = request.query_params.get("dir", "asc") == "desc"
        if sort not in SORTS:
            raise _bad(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
        if state and state not in STATES:
            raise _bad(f"status: expected one of {', '.join(STATES)}, got {state!r}")
        rows = dash.job_rows()
        shown = [r for r in rows if (not q or q.lower() in r.name.lower()) and (not state or r.state == state)]
        shown.sort(key=_sort_key(sort), reverse=desc)
        if sort in ("next", "last", "rate"):  # rows without a value last, whichever the direction
            shown.sort(key=lambda r: _sort_key(sort)(r)[0])
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1

        def sort_url(key: str) -> str:
            d = "desc" if key == sort and not desc else "asc"
            return "/?" + urlencode({k: v for k, v in (("q", q), ("status", state), ("sort", key), ("dir", d)) if v})

        return page(request, "jobs.html", rows=shown, total=len(rows), q=q, state=state, sort=sort, desc=desc,
                    sort_url=sort_url, states=STATES, counts=counts, live=LIVE_SLOW,
                    spark=lambda r: charts.sparkline([x.duration for x in r.recent if x.duration is not None
                                                      and x.status is not RunStatus.SKIPPED]))

    def job_page(request: Request) -> Response:
        name = request.path_params["name"]
        now = dash.clock.now()
        status = _status_param(request.query_params.get("status"))
        window = request.query_params.get("since", "")
        since = _since_param(window, now)
        before = _int_param(request.query_params.get("before"), "before", 1, 2**62)
        try:
            spec, stats, paused, instants = dash.job(name)
        except KeyError:
            raise HTTPException(404, f"no job named {name!r} in the jobs file or the history") from None
        hist = dash.history(name, status=status, since=since, before=before)
        chart = charts.durations_chart(dash.chart_runs(name), _short)
        daily = dash.daily(name)
        days = [(d, n, bad, charts.rate_bar(bad, n)) for d, n, bad in daily]

        def hist_url(**change: Any) -> str:
            params = {"status": status.value if status else "", "since": window, "before": ""}
            params.update({k: "" if v is None else str(v) for k, v in change.items()})
            query = urlencode({k: v for k, v in params.items() if v})
            return f"/jobs/{quote(name, safe='')}" + (f"?{query}" if query else "") + "#history"

        return page(request, "job.html", name=name, spec=spec, stats=stats, paused=paused, instants=instants,
                    words=dash.words(spec) if spec else None, hist=hist, status=status.value if status else "",
                    window=window, windows=WINDOWS, statuses=[s.value for s in RunStatus], before=before,
                    hist_url=hist_url, chart=chart, days=days, daily_chart=charts.daily_chart(daily),
                    live=LIVE_SLOW)

    def run_page(request: Request) -> Response:
        run = _run(dash, request.path_params["run_id"])
        result = None if run.result is None else json.dumps(run.result, indent=2, ensure_ascii=False)
        kept = dash.kept_output(run, KEPT_SHOWN)
        return page(request, "run.html", run=run, result=result, kept=kept, kept_shown=KEPT_SHOWN,
                    live=LIVE_FAST if run.status is RunStatus.RUNNING else 0)

    def run_output(request: Request) -> Response:
        run = _run(dash, request.path_params["run_id"])
        # text/plain with nosniff: a browser shows markup in it as text, never renders it.
        return StreamingResponse(dash.output_chunks(run), media_type="text/plain; charset=utf-8")

    def now_page(request: Request) -> Response:
        return page(request, "now.html", st=dash.now(), live=LIVE_FAST)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html", public=True,
                        next=_next_url(request.query_params.get("next", "/"), ""), wrong=False)
        body = await request.body()
        form = parse_qs(body[:4096].decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        target = _next_url((form.get("next") or ["/"])[0], "")
        if token is None or session is None:
            return RedirectResponse(target, 303)
        if not hmac.compare_digest(given.encode(), token.encode()):
            return page(request, "login.html", 401, public=True, next=target, wrong=True)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    # -- the API --

    def api_jobs(request: Request) -> Response:
        return JSONResponse([job_json(r) for r in dash.job_rows(durations=True)])

    def api_job_runs(request: Request) -> Response:
        name = request.path_params["name"]
        now = dash.clock.now()
        limit = _int_param(request.query_params.get("limit"), "limit", 1, 1000) or PAGE
        before = _int_param(request.query_params.get("before"), "before", 1, 2**62)
        status = _status_param(request.query_params.get("status"))
        since = _since_param(request.query_params.get("since"), now)
        try:
            hist = dash.history(name, status=status, since=since, before=before, limit=limit)
        except HistoryError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        headers = {}
        if hist.before is not None:
            params = dict(request.query_params, before=str(hist.before))
            headers["Link"] = f'</api/jobs/{quote(name, safe="")}/runs?{urlencode(params)}>; rel="next"'
        return JSONResponse([r.to_json(with_output=False) for r in hist.runs], headers=headers)

    def api_run(request: Request) -> Response:
        return JSONResponse(_run(dash, request.path_params["run_id"]).to_json())

    def api_status(request: Request) -> Response:
        return JSONResponse(status_json(dash.now(), dash.clock.now()))

    def healthz(request: Request) -> Response:
        try:
            with dash.store() as h:
                if h is not None:
                    h.paused()
        except HistoryError:
            pass
        ok = dash.store_error is None
        state = "empty" if dash.no_history else "readable" if ok else "unreadable"
        return JSONResponse({"ok": ok, "store": state}, 200 if ok else 503)

    async def error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 503
        detail = exc.detail if isinstance(exc, HTTPException) else f"the store cannot be read: {exc}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": detail}, code)
        return page(request, "error.html", code, code=code, detail=detail)

    routes = [
        Route("/", jobs_page), Route("/jobs/{name}", job_page), Route("/runs/{run_id:int}", run_page),
        Route("/runs/{run_id:int}/output", run_output),
        Route("/now", now_page), Route("/login", login, methods=["GET", "POST"]),
        Route("/api/jobs", api_jobs), Route("/api/jobs/{name}/runs", api_job_runs),
        Route("/api/runs/{run_id:int}", api_run), Route("/api/status", api_status), Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
                     exception_handlers={HTTPException: error, HistoryError: error})


def _run(dash: Dashboard, run_id: int) -> RunRecord:
    try:
        return dash.run(run_id)
    except RunNotFound:
        raise HTTPException(404, f"no run {run_id}") from None


def _next_url(path: str, query: str) -> str:
    """Where to go after logging in: a path of this site only (never `//host` or a URL)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path + (f"?{query}" if query else "")


def _sort_key(sort: str) -> Callable[[JobRow], Any]:
    far = datetime.max.replace(tzinfo=timezone.utc)
    if sort == "next":
        return lambda r: (r.next_run is None, r.next_run or far, r.name)
    if sort == "last":
        return lambda r: (r.last is None, r.last.started_at if r.last and r.last.started_at else far, r.name)
    if sort == "rate":
        return lambda r: (r.stats is None or r.stats.success_rate is None,
                          r.stats.success_rate if r.stats and r.stats.success_rate is not None else 0.0, r.name)
    if sort == "status":
        return lambda r: (r.state, r.name)
    return lambda r: (r.name.lower(), r.name)
