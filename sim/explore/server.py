"""The explorer's HTTP server: the standard library's ``ThreadingHTTPServer`` on 127.0.0.1, serving the static
page from the package and the JSON answers of ``sim.explore.api``.

``App.dispatch(method, path, body)`` does all the work and returns (status, content type, bytes), so the tests
call it without a socket; ``Handler`` only moves bytes. Input errors (``sim.errors.INPUT_ERRORS``) are HTTP 400
with the project's one-line message; anything else is a 500 whose line names the bug, and the server keeps
serving either way. Requests that compute wait on a semaphore (``App.CONCURRENCY`` at once: the machine's cores,
since the simulator is pure Python), and a body is refused beyond ``LIMITS['body_bytes']``.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import tempfile
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

from sim.errors import INPUT_ERRORS
from sim.explore import api

STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/app.css": "app.css",
          "/favicon.svg": "favicon.svg"}


def _json(status: int, payload) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(payload, allow_nan=False).encode()


class App:
    """The explorer's routes; one per server, holding its temporary folder and closed-form caches."""

    CONCURRENCY = 2

    def __init__(self, folder: str):
        self.workspace = api.Workspace(folder)
        self.engine = api.Engine()
        self.slots = threading.BoundedSemaphore(self.CONCURRENCY)
        self._schema = None

    def static(self, name: str) -> tuple[int, str, bytes]:
        data = resources.files("sim.explore").joinpath("static", name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return 200, kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith("script") else ""), data

    def dispatch(self, method: str, path: str, body: bytes = b"") -> tuple[int, str, bytes]:
        url = urlsplit(path)
        try:
            if method == "GET" and url.path in STATIC:
                return self.static(STATIC[url.path])
            if url.path == "/api/schema" and method == "GET":
                if self._schema is None:
                    self._schema = api.schema()
                return _json(200, self._schema)
            routes = {"/api/estimate": lambda s: api.estimate(s, self.workspace, self.engine),
                      "/api/run": lambda s: api.run(s, self.workspace),
                      "/api/sweep": lambda s: api.sweep(s, self.workspace, self.engine)}
            if url.path not in routes:
                return _json(404, {"error": f"no such page: {url.path}"})
            if method == "GET":
                state = dict(parse_qsl(url.query, keep_blank_values=True))
            elif method == "POST":
                try:
                    state = json.loads(body or b"{}")
                except (ValueError, RecursionError):
                    return _json(400, {"error": "page: the request body is not JSON"})
            else:
                return _json(405, {"error": f"{method} is not served here"})
            with self.slots:
                return _json(200, routes[url.path](state))
        except INPUT_ERRORS as e:
            return _json(400, {"error": self.workspace.clean(str(e))})
        except Exception as e:  # noqa: BLE001 - a bug must not stop the server; the page shows its line
            traceback.print_exc(file=sys.stderr)
            return _json(500, {"error": f"internal error (a bug, please report it): {type(e).__name__}: {e}"})


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass the server builds
    server_version = "aqpim-sim-explore"
    protocol_version = "HTTP/1.1"
    quiet = True

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - the standard library's names
        self._send(*self.app.dispatch("GET", self.path))

    def do_POST(self):  # noqa: N802
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= api.LIMITS["body_bytes"]:
            self.close_connection = True
            self._send(*_json(413 if n > 0 else 400, {"error": f"page: a request body holds at most "
                                                               f"{api.LIMITS['body_bytes'] // 1024} KiB"}))
            return
        self._send(*self.app.dispatch("POST", self.path, self.rfile.read(n)))

    def log_message(self, format, *args):  # noqa: A002
        if not self.quiet:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 200 simultaneous connections wait in the backlog instead of being refused


def make_server(port: int = 8765, folder: str | None = None, quiet: bool = True) -> Server:
    """A server on 127.0.0.1:``port`` (0: any free port); its files go to ``folder`` (a temporary folder the
    caller owns)."""
    app = App(folder or tempfile.mkdtemp(prefix="aqpim-explore-"))
    handler = type("BoundHandler", (Handler,), {"app": app, "quiet": quiet})
    return Server(("127.0.0.1", port), handler)
