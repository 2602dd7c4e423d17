"""The node's HTTP side, for operators and monitoring: health, readiness, metrics and the worklist.

``GET /``         the console page (HTML, ``console_page.py``): the worklist as a radiographer reads it;
``GET /healthz``  200 ``{"status": "alive", ...}`` while the process serves at all (liveness);
``GET /readyz``   200 ``{"status": "ready"}``, or 503 ``{"status": "not ready", "reasons": [...]}``; either
                  with the view's ``details()`` when it has any (the node: ``"notes"`` when start-up repaired
                  something, ``"backlog"`` while studies wait for inference);
``GET /metrics``  the Prometheus text exposition of the node's :class:`NodeMetrics`;
``GET /heatmap/STUDY/IMAGE/LABEL`` the heatmap of LABEL on image IMAGE of the study's current result, drawn on
                  the image as the model saw it with its "not for diagnosis" banner (PNG; ``?size=`` 64-2048, the
                  long side, default 1024); 404 when there is none or the image has left the spool;
``GET /worklist`` the current worklist, the same JSON as ``edgeinfer triage --output``, one window of it:
                  ``?since=`` (seconds since the epoch, or an ISO 8601 time; default: the view's, the node's is
                  the last 24 hours), ``?limit=`` (1-10000 studies; default the view's, 500), ``?offset=``. A
                  rendered page is reused while the view's ``worklist_version`` stays the same (at most 30 s) and
                  for 1 s after it changes, and one page renders at a time: pollers cost the node a cached
                  body, not a query each, so they cannot slow its acknowledgements.

Nothing else is served (404; another method on these paths: 405). An exception inside a handler
answers 500 with a short JSON error and is logged by its class only: an exception's text may carry
patient details or paths, so neither the response nor the log repeats it. Request bodies and
query strings are never logged, and uvicorn's access log is off unless asked for.

:class:`HttpServer` runs uvicorn in a background thread, bound to localhost unless told otherwise
(the worklist is not for the network at large). Only this module and :mod:`.metrics` import
starlette, uvicorn and prometheus_client (and the page, jinja2); importing ``edgeinfer`` never imports them.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
import traceback
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._io import json_text
from ..vr import valid_uid
from .metrics import NodeMetrics

log = logging.getLogger("edgeinfer.node.http")

#: no response of this server is worth caching: every one is a snapshot of the node's state
_NO_STORE = {"Cache-Control": "no-store"}


@runtime_checkable
class NodeView(Protocol):
    """What the HTTP side sees of a running node. Called from worker threads, one per request.

    ``health()``    alive information, e.g. ``{"uptime_s": 12.5, "version": "0.1.0"}``; cheap, no I/O.
    ``readiness()`` why the node is not ready (e.g. "spool disk full", "no model loaded"); ``[]``: ready.
    ``worklist(since=None, limit=None, offset=0)``  one window of the current worklist, shaped like
                    ``edgeinfer triage --output`` (None: the view's default window).
    ``metrics``     the node's :class:`NodeMetrics`; refresh its gauges before a scrape if they are
                    not kept current as things happen.
    """

    metrics: NodeMetrics

    def health(self) -> dict: ...

    def readiness(self) -> list[str]: ...

    def worklist(self, *, since: float | None = None, limit: int | None = None, offset: int = 0) -> dict: ...


# --- the application -------------------------------------------------------------------------------
def _json(obj: Any, status: int = 200) -> Response:
    """The one JSON rendering of the project (strict: no NaN tokens), as a response."""
    return Response(json_text(obj), status_code=status, media_type="application/json", headers=_NO_STORE)


def _guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Any exception -> 500 with a short JSON body; logged by class and stack, never by its text."""

    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        try:
            return handler(request)
        except Exception as exc:  # noqa: BLE001 - the one place that turns failures into a 500
            log.error("GET %s failed: %s (message withheld)", request.url.path, type(exc).__name__)
            if log.isEnabledFor(logging.DEBUG):  # where it failed: files, lines, functions; no message, no source
                stack = "\n".join(f"  {f.filename}:{f.lineno} in {f.name}"
                                  for f in traceback.extract_tb(exc.__traceback__))
                log.debug("GET %s failed (%s) at:\n%s", request.url.path, type(exc).__name__, stack)
            return JSONResponse({"status": "error", "error": "internal error"}, status_code=500,
                                headers=_NO_STORE)

    return endpoint


def _protected(guard, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """``handler`` behind ``guard`` (an :class:`~edgeinfer.node.auth.Guard`; None: open)."""
    if guard is None:
        return handler

    @functools.wraps(handler)
    def endpoint(request: Request) -> Response:
        from .auth import REALM, WINDOW_S

        status, _ = guard.check(request.headers.get("authorization"), request.client.host if request.client else "-")
        if status == 429:
            return Response(f"too many failed logins from this address; try again in {WINDOW_S:.0f} s\n",
                            status_code=429, headers={"Retry-After": f"{WINDOW_S:.0f}", **_NO_STORE})
        if status != 200:
            return Response("log in to see the console\n", status_code=401,
                            headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"', **_NO_STORE})
        return handler(request)

    return endpoint


def make_app(view: NodeView, guard=None) -> Starlette:
    """The Starlette app serving ``view``. The handlers are plain functions: Starlette runs them in
    its worker threads, so the view may block briefly (SQLite) without stalling the event loop. With
    ``guard`` the console, ``/worklist`` and ``/heatmap`` need a user of it; health, readiness and metrics
    (which carry no study or patient data) stay open to monitoring."""

    @_guarded
    def healthz(request: Request) -> Response:
        return _json({**view.health(), "status": "alive"})

    @_guarded
    def readyz(request: Request) -> Response:
        reasons = [str(r) for r in view.readiness()]
        extra = dict(getattr(view, "details", dict)())
        if reasons:
            return _json({"status": "not ready", "reasons": reasons, **extra}, status=503)
        return _json({"status": "ready", **extra})

    @_guarded
    def metrics(request: Request) -> Response:
        refresh = getattr(view, "refresh_gauges", None)
        if refresh is not None:  # counts that live in the state (studies, outbox) are read at each scrape
            refresh()
        payload, content_type = view.metrics.render()
        return Response(payload, media_type=content_type, headers=_NO_STORE)

    pages = _PageCache()

    @_guarded
    def worklist(request: Request) -> Response:
        try:
            query = _worklist_query(request.query_params)
        except ValueError as exc:
            return _json({"status": "error", "error": str(exc)}, status=400)
        body = pages.get(view, query, lambda: json_text(view.worklist(**query)))
        return Response(body, media_type="application/json", headers=_NO_STORE)

    @_guarded
    def console(request: Request) -> Response:
        from .console_page import render

        return Response(render(view), media_type="text/html; charset=utf-8", headers=_NO_STORE)

    @_guarded
    def heatmap(request: Request) -> Response:
        p = request.path_params
        try:
            size = int(request.query_params.get("size", HEATMAP_SIZE))
        except ValueError:
            size = -1
        if not HEATMAP_MIN <= size <= HEATMAP_MAX:
            return _json({"status": "error", "error": f"size must be an integer from {HEATMAP_MIN} to {HEATMAP_MAX}"},
                         status=400)
        render = getattr(view, "heatmap_png", None)
        png = None
        if render is not None and valid_uid(p["study"]) and valid_uid(p["image"]):
            png = render(p["study"], p["image"], p["label"], size)
        if png is None:
            return _json({"status": "error", "error": "no such heatmap in the current results (or its image has left "
                                                      "the spool)"}, status=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    console, worklist, heatmap = (_protected(guard, h) for h in (console, worklist, heatmap))
    routes = [Route("/", console, methods=["GET"]),
              Route("/heatmap/{study}/{image}/{label}", heatmap, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]), Route("/worklist", worklist, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


#: the most studies one worklist page holds
MAX_LIMIT = 10_000
#: a heatmap image's long side: default and bounds of ``?size=``
HEATMAP_SIZE, HEATMAP_MIN, HEATMAP_MAX = 1024, 64, 2048


def _worklist_query(params) -> dict:
    """``since``, ``limit`` and ``offset`` from a query string; ValueError saying what is wrong and what to send."""
    import datetime as dt

    unknown = sorted(set(params) - {"since", "limit", "offset"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}: /worklist takes since, limit and offset")
    query: dict = {}
    if "since" in params:
        text = params["since"]
        try:
            query["since"] = float(text)
        except ValueError:
            try:
                t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("since: expected seconds since the epoch or an ISO 8601 time, "
                                 "e.g. since=2026-12-04T08:00:00Z") from None
            query["since"] = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    for name, low, high in (("limit", 1, MAX_LIMIT), ("offset", 0, None)):
        if name in params:
            try:
                value = int(params[name])
            except ValueError:
                value = None
            if value is None or value < low or (high is not None and value > high):
                raise ValueError(f"{name}: expected a whole number from {low}" + (f" to {high}" if high else " up"))
            query[name] = value
    return query


class _PageCache:
    """Rendered worklist pages, reused while the view's ``worklist_version`` stays the same (up to ``FRESH_S``)
    and for ``SNAPSHOT_S`` after it changed; one page renders at a time. A view without a version is never
    cached. Failures are never cached."""

    SNAPSHOT_S, FRESH_S, KEEP = 1.0, 30.0, 16

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[tuple, tuple[int, float, str]] = {}

    def get(self, view, query: dict, render: Callable[[], str]) -> str:
        version = getattr(view, "worklist_version", None)
        if version is None:
            return render()
        key = tuple(sorted(query.items()))
        with self._lock:
            hit = self._pages.get(key)
            now = time.monotonic()
            if hit is not None and (now - hit[1] < self.SNAPSHOT_S or (hit[0] == version and now - hit[1] < self.FRESH_S)):
                return hit[2]
            body = render()
            if len(self._pages) >= self.KEEP:
                self._pages.pop(min(self._pages, key=lambda k: self._pages[k][1]))
            self._pages[key] = (version, time.monotonic(), body)
            return body


def _http_error(request: Request, exc: Exception) -> Response:
    """404 / 405 as short JSON too (the detail is Starlette's fixed phrase, never the request's path)."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"status": "error", "error": exc.detail}, status_code=exc.status_code,
                        headers={**_NO_STORE, **(exc.headers or {})})


# --- the server ------------------------------------------------------------------------------------
class _ThreadedServer(uvicorn.Server):
    """uvicorn without signal handling: it runs in a thread, the node owns SIGINT/SIGTERM.

    uvicorn 0.54 installs handlers in ``capture_signals()`` (it already skips them off the main
    thread); older releases call ``install_signal_handlers()``. Both are no-ops here.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:
        pass


class HttpServer:
    """uvicorn serving ``app`` in a background thread.

    ``start()`` binds the socket itself (so a taken port raises :class:`OSError` right there, and
    ``port=0`` picks a free port, then readable as :attr:`port`) and returns once uvicorn serves
    it. ``stop()`` closes the socket, lets requests in flight finish (up to
    ``graceful_timeout_s``) and joins the thread. Also a context manager.

    ``log_level`` applies to uvicorn's own loggers; the access log is off unless ``access_log=True``
    (and even then its lines are INFO, so they need ``log_level="info"``): it would write every
    URL and client address into the logs.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "warning",
                 access_log: bool = False, graceful_timeout_s: int = 3, start_timeout_s: float = 10.0,
                 tls_cert: str | os.PathLike | None = None, tls_key: str | os.PathLike | None = None) -> None:
        self.app = app
        self.tls = (str(tls_cert), str(tls_key)) if tls_cert and tls_key else None
        self.host = host
        self.port = port
        self.log_level = log_level
        self.access_log = access_log
        self.graceful_timeout_s = graceful_timeout_s
        self.start_timeout_s = start_timeout_s
        self._server: _ThreadedServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _bind(self) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            if os.name == "posix":  # rebind at once after stop(), past TIME_WAIT (not on Windows: it means steal)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self) -> "HttpServer":
        if self._thread is not None:
            raise RuntimeError("this HttpServer was already started; make a new one")
        sock = self._bind()
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, host=self.host, port=self.port, lifespan="off", log_config=None, log_level=self.log_level,
            access_log=self.access_log, timeout_graceful_shutdown=self.graceful_timeout_s, server_header=False,
            **({"ssl_certfile": self.tls[0], "ssl_keyfile": self.tls[1]} if self.tls else {}))
        if self.access_log:  # undo an earlier server's access_log=False on the shared logger
            logging.getLogger("uvicorn.access").propagate = True
        self._server = server = _ThreadedServer(config)
        self._thread = threading.Thread(target=self._run, args=(server, sock), name=f"edgeinfer-http-{self.port}",
                                        daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self.start_timeout_s
        while not server.started:
            if not self._thread.is_alive():
                self._close_socket()
                raise RuntimeError(f"the HTTP server on {self.url} did not start"
                                   + (f" ({type(self._error).__name__})" if self._error else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the HTTP server on {self.url} did not start within {self.start_timeout_s:g} s")
            time.sleep(0.01)
        log.info("serving on %s", self.url)
        return self

    def _run(self, server: _ThreadedServer, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - SystemExit from uvicorn's startup included
            self._error = exc
            log.error("the HTTP server stopped: %s", type(exc).__name__)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop serving and free the port. Safe to call twice, or without start()."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(self.graceful_timeout_s + 2 if timeout_s is None else timeout_s)
            if thread.is_alive():  # a request still stuck: stop waiting for it
                server.force_exit = True
                thread.join(2)
            if thread.is_alive():
                log.warning("the HTTP server thread did not stop; leaving it (daemon) behind")
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
