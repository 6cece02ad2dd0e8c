"""`cronpy web`: the real binary serving a real history, checked over HTTP and in a real browser.

The browser tests drive Debian's chromium through Playwright's Python package (no browser
download). They skip locally when chromium or the `web` extra is absent, and fail instead
under CI=true, so CI can never pass them by skipping.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import cronpy, stop, wait_for

CHROMIUM = os.environ.get("CRONPY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
expect: Any = None  # playwright's, imported with the browser
EVIL = "<script>alert(1)</script> [bold]x[/bold]"


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI must run the web tests, not skip them)")
    pytest.skip(what)


try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    HAVE_WEB = False
else:
    HAVE_WEB = True


@pytest.fixture(autouse=True)
def _web_extra() -> None:
    if not HAVE_WEB:
        _missing("the `web` extra is not installed (pip install -e '.[web,test]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


class Web:
    """A `cronpy web` process on a free loopback port."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        return http(self.url + path, **kw)

    def json(self, path: str, **kw: Any) -> Any:
        status, _, body = self.get(path, **kw)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    started: list[subprocess.Popen[str]] = []

    def start(jobs: Path, *args: str, env: dict[str, str] | None = None) -> Web:
        full_env = {k: v for k, v in os.environ.items() if k not in ("CRONPY_STATE_DIR", "CRONPY_FILE")}
        full_env.update(env or {})
        log = tmp_path / f"web-{len(started)}.log"
        with open(log, "w") as err:  # a file, not a pipe nobody reads: the server never blocks on it
            proc = subprocess.Popen([sys.executable, "-m", "cronpy", "web", "-f", str(jobs), "--port", "0", *args],
                                    env=full_env, text=True, stdout=subprocess.DEVNULL, stderr=err)
        started.append(proc)

        def url() -> str | None:  # "cronpy web: http://127.0.0.1:PORT/ (…)", once it listens
            assert proc.poll() is None, log.read_text()
            first = log.read_text().split("\n", 1)
            return first[0].split()[2].rstrip("/") if len(first) > 1 and first[0].startswith("cronpy web:") else None

        assert wait_for(lambda: url() is not None, 20), "cronpy web did not start"
        w = Web(proc, url() or "")

        def up() -> bool:
            try:
                return w.get("/healthz")[0] in (200, 503)
            except OSError:
                return False

        assert wait_for(up, 20), "cronpy web does not answer"
        return w

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0  # a clean stop, like every cronpy command


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not HAVE_WEB:
        _missing("the `web` extra is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        _missing("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[web,test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """A browser page that records console errors, page errors and dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    global expect
    from playwright.sync_api import expect

    context = browser.new_context()
    t = Tab(context.new_page())
    yield t
    context.close()


def write_jobs(tmp_path: Path, body: str) -> Path:
    (tmp_path / "tasks.py").write_text(
        "def boom():\n"
        f"    print({EVIL!r})\n"
        f"    raise RuntimeError({EVIL!r})\n")
    p = tmp_path / "jobs.yaml"
    p.write_text("state_dir: state\njobs:\n" + body)
    return p


BASIC = """\
  ok:
    description: Says hello
    schedule: "*/5 * * * *"
    command: echo hello
  broken:
    schedule: 1h
    command: echo failing; exit 3
  idle:
    schedule: "0 3 * * *"
    command: "true"
    enabled: false
"""


def trigger(jobs: Path, name: str) -> None:
    cronpy("trigger", name, "-f", str(jobs))


def run_id(web: Web, job: str) -> int:
    return int(web.json(f"/api/jobs/{job}/runs?limit=1")[0]["id"])


# -- in the browser -----------------------------------------------------------------------------

def test_each_page_loads_without_console_errors(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "ok")
    trigger(jobs, "broken")
    w = web(jobs)
    failed = run_id(w, "broken")
    for path, expect in (("/", "Says hello"), ("/jobs/ok", "Next runs"), (f"/runs/{failed}", "exit code"),
                         ("/now", "Latest failures"), ("/jobs/broken?status=failed&since=7d", "History")):
        response = tab.page.goto(w.url + path)
        assert response.status == 200, path
        tab.page.wait_for_load_state("load")
        assert expect in tab.page.inner_text("main"), path
    assert tab.errors == []
    # The failing run is on its page with its exit status and output, and listed as a failure on /now.
    tab.page.goto(f"{w.url}/runs/{failed}")
    assert "failing" in tab.page.inner_text("#output")
    assert tab.page.inner_text("#run-status") == "failed"


def test_user_data_is_shown_as_text_and_never_runs(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    jobs = write_jobs(tmp_path, f"""\
  evil_cmd:
    description: {json.dumps(EVIL)}
    command: {json.dumps("echo '" + EVIL + "'; exit 1")}
  evil_py:
    description: {json.dumps(EVIL)}
    python: tasks:boom
""")
    trigger(jobs, "evil_cmd")
    trigger(jobs, "evil_py")
    w = web(jobs)
    pages = ["/", "/jobs/evil_cmd", "/jobs/evil_py", f"/runs/{run_id(w, 'evil_cmd')}",
             f"/runs/{run_id(w, 'evil_py')}", "/now"]
    for path in pages:
        tab.page.goto(w.url + path)
        tab.page.wait_for_load_state("load")
        text = tab.page.inner_text("main")
        assert "<script>alert(1)</script>" in text, path
        assert "[bold]x[/bold]" in text, path
        # Only the page's own script element exists: the user's text became text nodes.
        assert tab.page.locator("script").count() == 1, path
        assert tab.page.locator("main b, main strong:has-text('x')").count() == 0, path
    assert tab.dialogs == []
    assert tab.errors == []


@contextmanager
def held_run(tmp_path: Path, name: str, finish: str, start: str = "") -> Iterator[
        tuple[Path, Path, subprocess.Popen[bytes]]]:
    """Job `name` started by a real `cronpy trigger`: it runs `start`, then waits until the test
    creates the file `go`, then runs `finish` (shell)."""
    go = tmp_path / "go"
    jobs = write_jobs(tmp_path, f"""\
  {name}:
    command: "{start} for i in $(seq 1 3000); do [ -e '{go}' ] && {finish}; sleep 0.02; done; exit 1"
""")
    proc = subprocess.Popen([sys.executable, "-m", "cronpy", "trigger", name, "-f", str(jobs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield jobs, go, proc
    finally:
        stop(proc)  # type: ignore[arg-type]


def started(w: Web, name: str) -> int:
    """The id of the job's run once it is recorded."""
    assert wait_for(lambda: w.json(f"/api/jobs/{name}/runs")[:1] != [], 20)
    return run_id(w, name)


def test_a_running_run_updates_without_a_reload(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    with held_run(tmp_path, "slow", "echo done && exit 0", start="echo working on it;") as (jobs, go, proc):
        w = web(jobs)
        rid = started(w, "slow")
        tab.page.goto(f"{w.url}/runs/{rid}")
        tab.page.evaluate("window.__sameDocument = true")
        assert tab.page.inner_text("#run-status") == "running"
        # What it has printed so far shows while it runs (from its live output file).
        expect(tab.page.locator("#output")).to_contain_text("working on it", timeout=10_000)
        assert tab.page.inner_text("#run-status") == "running"
        go.touch()
        expect(tab.page.locator("#run-status")).to_have_text("success", timeout=10_000)
        assert tab.page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
        assert "done" in tab.page.inner_text("#output")
        assert proc.wait(20) == 0
    assert tab.errors == []


def test_a_failing_job_appears_on_now_within_two_seconds(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    with held_run(tmp_path, "flaky", "echo 'disk full' && exit 7") as (jobs, go, proc):
        w = web(jobs)
        started(w, "flaky")
        tab.page.goto(f"{w.url}/now")
        assert "flaky" in tab.page.inner_text("#running") and "flaky" not in tab.page.inner_text("#failures")
        tab.page.evaluate("window.__sameDocument = true")
        go.touch()
        t0 = time.monotonic()
        assert proc.wait(10) == 7
        expect(tab.page.locator("#failures")).to_contain_text("flaky", timeout=2_000)
        assert time.monotonic() - t0 < 2.0  # from the job's failure (its gate) to the row on the page
        assert tab.page.evaluate("window.__sameDocument") is True
        assert "Nothing is running" in tab.page.inner_text("#running")
    assert tab.errors == []


def test_a_kept_output_is_shown_whole(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    jobs = write_jobs(tmp_path, """\
  big:
    command: seq 1 40000
    output: keep
""")
    trigger(jobs, "big")  # 229 KB printed: the history keeps only its last 64 KiB
    w = web(jobs)
    rid = run_id(w, "big")
    assert w.json(f"/api/runs/{rid}")["output"].split()[0] != "1"  # the API is `show --json`: the tail
    tab.page.goto(f"{w.url}/runs/{rid}")
    text = tab.page.inner_text("#output")
    assert text.startswith("1\n2\n3\n") and text.rstrip().endswith("40000")
    assert "the whole output" in tab.page.inner_text("main")
    status, headers, body = w.get(f"/runs/{rid}/output")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert headers["x-content-type-options"] == "nosniff"
    assert body == "".join(f"{i}\n" for i in range(1, 40001))
    assert tab.errors == []


def test_a_dashboard_started_before_the_first_run_fills_in_live(tmp_path: Path, web: Callable[..., Web],
                                                               tab: Tab) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    w = web(jobs)
    assert w.json("/healthz") == {"ok": True, "store": "empty"}
    tab.page.goto(w.url + "/")
    assert "No history yet" in tab.page.inner_text("#banners")
    tab.page.evaluate("window.__sameDocument = true")
    trigger(jobs, "broken")
    expect(tab.page.locator("#live")).to_contain_text("failed", timeout=15_000)
    expect(tab.page.locator("#banners")).not_to_contain_text("No history yet", timeout=15_000)
    assert tab.page.evaluate("window.__sameDocument") is True
    assert w.json("/healthz") == {"ok": True, "store": "readable"}
    assert tab.errors == []


def test_the_login_form_lets_a_browser_in_with_the_token(tmp_path: Path, web: Callable[..., Web], tab: Tab) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    w = web(jobs, "--token", "s3cret-token")
    response = tab.page.goto(w.url + "/jobs/ok")
    assert response.status == 401
    tab.page.fill("input[name=token]", "wrong")
    tab.page.click("button[type=submit]")
    assert "That is not the token" in tab.page.inner_text("main")
    tab.page.fill("input[name=token]", "s3cret-token")
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(w.url + "/jobs/ok")
    assert "Next runs" in tab.page.inner_text("main")
    cookie = [c for c in tab.page.context.cookies() if c["name"] == "cronpy_web"][0]
    assert cookie["httpOnly"] and cookie["value"] != "s3cret-token"
    assert tab.errors == [e for e in tab.errors if "401" in e]  # only the expected 401 responses


# -- over HTTP ----------------------------------------------------------------------------------

def test_a_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    port = free_port()
    r = cronpy("web", "-f", str(jobs), "--host", "0.0.0.0", "--port", str(port), timeout=30)
    assert r.returncode == 2
    assert "--token" in r.stderr and "loopback" in r.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing was listening


def test_a_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = cronpy("web", "-f", str(jobs), "--port", str(taken.getsockname()[1]), timeout=30)
    assert r.returncode == 2
    assert "cannot listen on 127.0.0.1 port" in r.stderr and "in use" in r.stderr


def test_the_pages_work_without_javascript(tmp_path: Path, web: Callable[..., Web], browser: Any) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "broken")
    w = web(jobs)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(w.url + "/")
        names = lambda: page.locator("td.job > a").all_inner_texts()  # noqa: E731
        assert names() == ["broken", "idle", "ok"]
        page.click("th a:text('Job')")  # sorted by name already: the link turns the order
        assert names() == ["ok", "idle", "broken"]
        page.fill("input[name=q]", "o")
        page.select_option("select[name=status]", "failed")
        page.click("form.filters button")
        assert names() == ["broken"]
        page.click("td.job > a")
        page.select_option("#history select[name=status]", "success")
        page.click("#history button")
        assert "No runs." in page.inner_text("#history")
    finally:
        context.close()


def test_requests_without_the_token_get_401(tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "ok")
    w = web(jobs, env={"CRONPY_WEB_TOKEN": "t0ken"})
    for path in ("/", "/now", "/jobs/ok", "/runs/1", "/api/jobs", "/api/jobs/ok/runs", "/api/runs/1", "/api/status"):
        status, headers, body = w.get(path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Bearer")
        assert "echo hello" not in body and "Says hello" not in body and "history.db" not in body
        assert w.get(path, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert w.get(path, headers={"Authorization": "Bearer t0ken"})[0] == 200, path
    assert w.get("/healthz")[0] == 200  # for probes: says only whether the store is readable


def test_without_a_token_only_loopback_host_names_are_served(tmp_path: Path, web: Callable[..., Web]) -> None:
    w = web(write_jobs(tmp_path, BASIC))
    assert w.get("/", headers={"Host": "evil.example:8080"})[0] == 421  # a DNS-rebinding page
    assert w.get("/", headers={"Host": "localhost"})[0] == 200


def test_no_endpoint_changes_state(tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "ok")
    trigger(jobs, "broken")
    db = tmp_path / "state" / "history.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    w = web(jobs)
    paths = ["/", "/now", "/jobs/ok", "/runs/1", "/api/jobs", "/api/jobs/ok/runs", "/api/runs/1", "/api/status",
             "/healthz"]
    for path in paths:
        assert w.get(path)[0] == 200, path
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert w.get(path, method=method, data=b"x")[0] == 405, (method, path)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_the_api_speaks_the_cli_json(tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "ok")
    trigger(jobs, "broken")
    w = web(jobs)
    f = ["-f", str(jobs)]

    def cli(*args: str) -> Any:
        r = cronpy(*args, "--json", *f)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert w.json("/api/jobs/broken/runs") == cli("history", "broken")
    rid = run_id(w, "broken")
    assert w.json(f"/api/runs/{rid}") == cli("show", str(rid))
    api_jobs = {j["job"]: j for j in w.json("/api/jobs")}
    for listed in cli("list"):
        mine = api_jobs[listed["job"]]
        assert {k: mine[k] for k in listed if k != "next_run"} == {k: v for k, v in listed.items() if k != "next_run"}
    for st in cli("stats"):
        mine = api_jobs[st["job"]]
        assert {k: mine[k] for k in st if k != "next_run"} == {k: v for k, v in st.items() if k != "next_run"}
    assert set(w.json("/api/status")) == set(cli("status"))
    assert w.json("/api/status")["latest_failures"][0]["id"] == rid


def test_job_history_pages_by_run_id(tmp_path: Path, web: Callable[..., Web]) -> None:
    from cronpy.history import History
    from cronpy.models import RunStatus, Trigger

    jobs = write_jobs(tmp_path, BASIC)
    with History.open(tmp_path / "state") as h:  # five recorded runs, as the runner writes them
        for i in range(5):
            at = datetime.now(timezone.utc) - timedelta(minutes=10 - i)
            run = h.start_run("ok", Trigger.MANUAL, at)
            assert run is not None
            h.finish_run(run, RunStatus.SUCCESS, at + timedelta(seconds=1), duration=1.0, exit_code=0)
    w = web(jobs)
    ids = [r["id"] for r in w.json("/api/jobs/ok/runs")]
    assert len(ids) == 5
    status, headers, body = w.get("/api/jobs/ok/runs?limit=2")
    assert [r["id"] for r in json.loads(body)] == ids[:2]
    nxt = headers["link"].split(">")[0].lstrip("<")
    assert [r["id"] for r in w.json(nxt)] == ids[2:4]
    _, _, html = w.get(f"/jobs/ok?before={ids[1]}")
    assert f"#{ids[2]}" in html and f"#{ids[0]}<" not in html
    assert w.get("/api/jobs/ok/runs?status=bogus")[0] == 400
    assert w.get("/api/jobs/ok/runs?since=1h")[0] == 200
    assert w.get("/jobs/nope")[0] == 404
    assert w.get("/runs/999999")[0] == 404


def test_the_jobs_page_sorts_and_filters(tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    trigger(jobs, "ok")
    trigger(jobs, "broken")
    w = web(jobs)

    def order(query: str) -> list[str]:
        status, _, html = w.get("/" + query)
        assert status == 200
        names = ["ok", "broken", "idle"]
        found = sorted((html.index(f'href="/jobs/{n}"'), n) for n in names if f'href="/jobs/{n}"' in html)
        return [n for _, n in found]

    assert order("?sort=name") == ["broken", "idle", "ok"]
    assert order("?sort=name&dir=desc") == ["ok", "idle", "broken"]
    assert order("?status=failed") == ["broken"]
    assert order("?status=disabled") == ["idle"]
    assert order("?q=BRO") == ["broken"]
    assert order("?sort=next")[-1] == "idle"  # no next run: last, whichever the direction
    assert order("?sort=next&dir=desc")[-1] == "idle"
    assert w.get("/?sort=bogus")[0] == 400


def test_an_edited_jobs_file_is_read_again_and_a_broken_one_keeps_the_last_jobs(
        tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, BASIC)
    w = web(jobs)
    jobs.write_text(jobs.read_text() + "  extra:\n    command: 'true'\n")
    assert "extra" in [j["job"] for j in w.json("/api/jobs")]
    jobs.write_text(jobs.read_text() + "  broken2: {schedule: 'not a schedule', command: x}\n")
    status, _, html = w.get("/")
    assert status == 200 and "The jobs file no longer validates" in html and "broken2" in html
    assert [j["job"] for j in w.json("/api/jobs")] == ["broken", "extra", "idle", "ok"]


def test_secrets_in_a_jobs_definition_are_masked(tmp_path: Path, web: Callable[..., Web]) -> None:
    jobs = write_jobs(tmp_path, """\
  leaky:
    command: curl -fsS https://deploy:hunter2@api.example.com/hook
    on_failure: curl https://hooks.example.com/x?token=tok3n-value
    ping: https://ping-user:pingpw@hc.example.com/ping/1
    env: {API_KEY: envsecret}
""")
    w = web(jobs)
    status, _, html = w.get("/jobs/leaky")
    assert status == 200 and "api.example.com/hook" in html and "API_KEY" in html
    for secret in ("hunter2", "tok3n-value", "pingpw", "envsecret"):
        assert secret not in html


def test_the_web_layer_imports_neither_the_runner_nor_the_service() -> None:
    code = ("import sys, cronpy.web.app, cronpy.web.data; "
            "bad = [m for m in ('cronpy.runner', 'cronpy.service', 'cronpy.executor') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_on_a_fleet_store_now_names_the_leader_and_its_epoch(tmp_path: Path, web: Callable[..., Web],
                                                              pg_url: str, tab: Tab) -> None:
    from cronpy.pgstore import PgStore

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"store: {pg_url}\nstate_dir: state\njobs:\n  ping: {{schedule: 1m, command: 'true'}}\n")
    leader = PgStore(pg_url, lease=30)
    try:
        assert leader.try_acquire()
        leader.register_runner("run")
        w = web(jobs)
        status = w.json("/api/status")
        assert status["scheduler"]["pid"] == os.getpid() and status["scheduler"]["epoch"] >= 1
        assert [f["pid"] for f in status["store"]["fleet"]] == [os.getpid()]
        tab.page.goto(w.url + "/now")
        assert f"epoch {status['scheduler']['epoch']}" in tab.page.inner_text("main")
        assert "lease until" in tab.page.inner_text("main")
        assert tab.errors == []
    finally:
        leader.close()
