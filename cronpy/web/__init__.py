"""`cronpy web`: a read-only dashboard over the history (the `web` extra: Starlette, uvicorn,
Jinja2).

Layout: `data.py` reads the jobs file and the store (no HTTP), `charts.py` draws SVG on the
server, `app.py` holds the routes, `templates/` the pages and `static/` the stylesheet and the
small script that refreshes the live parts. The web layer never writes to the store and never
imports the runner (a test checks both).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from typing import Any, Iterator

from cronpy.errors import CronpyError, UsageError


def serve(file: str | None, state_dir: str | None, store: str | None, *, host: str = "127.0.0.1",
          port: int = 8080, token: str | None = None) -> None:
    """Serve the dashboard until SIGINT/SIGTERM.

    Raises UsageError (exit 2) for a non-loopback `host` without a token or a missing extra,
    ConfigError (exit 2) for a jobs file that does not validate.
    """
    token = token or None
    try:
        import uvicorn

        from cronpy.web.app import create_app, is_loopback
        from cronpy.web.data import Dashboard
    except ImportError as exc:
        raise UsageError(f"cronpy web needs the `web` extra ({exc.name} is missing):"
                         " pip install 'cronpy-runner[web]'") from None
    if not is_loopback(host) and token is None:
        raise UsageError(f"--host {host} is not a loopback address: anyone who can reach it could read the"
                         " history, so give --token (or set CRONPY_WEB_TOKEN)")
    dash = Dashboard(file, state_dir, store)
    app = create_app(dash, token=token, loopback_only=is_loopback(host))
    # The first jobs page pays for importing cron-descriptor and describing every schedule
    # (~0.6 s of a 0.74 s first request on the benchmark's 50 jobs): pay it before serving.
    try:
        dash.job_rows()
    except CronpyError:
        pass  # the page will say what is wrong
    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"cronpy web: http://{shown}:{sock.getsockname()[1]}/ (jobs {dash.path}, history {dash.location}"
                     f"{', token required' if token else ''}); Ctrl-C stops\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, proxy_headers=False)
    try:
        _server(uvicorn.Server)(config).run(sockets=[sock])
    finally:
        sock.close()
        dash.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one, as printed), or UsageError saying
    why not (a port in use, an address this host does not have) before anything is served."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        # Listening now, so the printed URL takes connections at once (the kernel queues them
        # until uvicorn accepts); uvicorn listens again on the same socket, which is harmless.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    return sock


def _server(base: Any) -> Any:
    """uvicorn's Server, stopping on SIGINT/SIGTERM with exit status 0 like every cronpy command
    (uvicorn re-raises the signal after its shutdown, so the process would die of it: 143)."""

    class Server(base):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            old = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    return Server
