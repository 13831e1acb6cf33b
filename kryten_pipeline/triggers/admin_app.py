"""The admin HTTP endpoint (seed 000 REQ-001): a Starlette app, served by uvicorn.

``POST /refresh?namespace=NS[&wait=true][&requested_by=WHO]``, ``GET /status?namespace=NS``, ``GET /runs/RUN_ID``
and ``GET /healthz``. Every route but ``/healthz`` needs ``Authorization: Bearer <KRYTEN_ADMIN_TOKEN>`` (compared
in constant time). Answers are JSON, errors included (``{"error": "…"}``): 401 without a bearer token, 403 with a
wrong one, 400 for an unknown namespace, 404/405 for unknown routes and methods, 408 for a body that does not
arrive in time, 413 for a body over ``MAX_BODY_BYTES`` (no route takes one), 503 when NATS cannot be reached.
Malformed HTTP is answered 400 by uvicorn itself. The work is asynchronous: a slow client holds a coroutine,
never a thread, and a ``wait=true`` request waits on the run without blocking the others.

Refreshes run in :class:`~kryten_pipeline.triggers.refresh.RefreshLauncher`'s child processes, recorded in the
Dagster instance. ``KRYTEN_ADMIN_TLS_CERT``/``KRYTEN_ADMIN_TLS_KEY`` make uvicorn serve HTTPS.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kryten_pipeline.errors import ConfigurationError, KrytenError
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import Settings
from kryten_pipeline.snapshot.status import read_snapshot_status
from kryten_pipeline.triggers.refresh import TRUE_WORDS, RefreshLauncher, run_outcome, tag_value

logger = logging.getLogger(__name__)

MIN_ADMIN_TOKEN_CHARS = 16
# No route reads a body; one is drained (so keep-alive stays in step) up to this size, else 413.
MAX_BODY_BYTES = 64 * 1024
# A body (or the rest of one) that takes longer than this to arrive is answered 408.
BODY_TIMEOUT_S = 10.0
# Request headers larger than this are refused by uvicorn's HTTP parser (400).
MAX_HEADER_BYTES = 16 * 1024
STARTUP_TIMEOUT_S = 10.0
JSON_HEADERS = {"Cache-Control": "no-store"}

Handler = Callable[[Request], Awaitable[Response]]


def check_admin_settings(settings: Settings) -> None:
    """Refuse to start without a usable token (the endpoint can launch runs), or with half a TLS setting."""
    token = settings.admin_token or ""
    if not token:
        raise ConfigurationError(
            "the admin endpoint refuses to start without a bearer token; set KRYTEN_ADMIN_TOKEN "
            "(e.g. to the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)",
            setting="KRYTEN_ADMIN_TOKEN",
        )
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"KRYTEN_ADMIN_TOKEN is too short ({len(token)} characters); use at least {MIN_ADMIN_TOKEN_CHARS}",
            setting="KRYTEN_ADMIN_TOKEN",
        )
    if not 0 <= settings.admin_port <= 65535:
        raise ConfigurationError(f"port {settings.admin_port} is out of range", setting="KRYTEN_ADMIN_PORT")
    if bool(settings.admin_tls_cert) != bool(settings.admin_tls_key):
        missing = "KRYTEN_ADMIN_TLS_KEY" if settings.admin_tls_cert else "KRYTEN_ADMIN_TLS_CERT"
        raise ConfigurationError(f"HTTPS needs both KRYTEN_ADMIN_TLS_CERT and KRYTEN_ADMIN_TLS_KEY; set {missing}",
                                 setting=missing)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**JSON_HEADERS, **(headers or {})})


def _ok(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=JSON_HEADERS)


def build_admin_app(settings: Settings, launcher: RefreshLauncher, *,
                    body_timeout_s: float = BODY_TIMEOUT_S) -> Starlette:
    """The endpoint's routes over ``launcher`` (which runs the refreshes)."""
    check_admin_settings(settings)
    token = (settings.admin_token or "").encode("utf-8")

    async def drain_body(request: Request) -> Response | None:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return _error(413, f"no route takes a body; at most {MAX_BODY_BYTES} bytes are read")
        received = 0
        try:
            async with asyncio.timeout(body_timeout_s):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > MAX_BODY_BYTES:
                        return _error(413, f"no route takes a body; at most {MAX_BODY_BYTES} bytes are read")
        except TimeoutError:
            return _error(408, f"the request body did not arrive within {body_timeout_s:g} s")
        except ClientDisconnect:
            return _error(400, "the client went away before sending its body")
        return None

    def refused(request: Request) -> Response | None:
        scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return _error(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": 'Bearer realm="kryten-pipeline"'})
        if not hmac.compare_digest(presented.strip().encode("utf-8"), token):
            return _error(403, "invalid token")
        return None

    def endpoint(handler: Handler, *, auth: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            problem = await drain_body(request) or (refused(request) if auth else None)
            if problem is not None:
                return problem
            try:
                return await handler(request)
            except KrytenError as exc:
                return _error(400 if isinstance(exc, ConfigurationError) else 503, str(exc))
        return wrapped

    async def healthz(_request: Request) -> Response:
        return _ok({"ok": True})

    async def refresh(request: Request) -> Response:
        query = request.query_params
        namespace = launcher.resolve_namespace(query.get("namespace"))
        tags = {"kryten/trigger": "admin-http"}
        if query.get("requested_by"):
            tags["kryten/requested_by"] = tag_value(query["requested_by"])
        run_id, future = await run_in_threadpool(launcher.submit, namespace, tags=tags)
        if (query.get("wait") or "").lower() not in TRUE_WORDS:
            return _ok({"status": "accepted", "namespace": namespace, "run_id": run_id, "run": f"/runs/{run_id}"},
                       202)
        outcome = run_outcome(await asyncio.wrap_future(future))
        return _ok(outcome, 200 if outcome["status"] == "ok" else 500)

    async def status(request: Request) -> Response:
        namespace = request.query_params.get("namespace") or settings.namespaces[0]
        validate_namespace(namespace)
        return _ok(await read_snapshot_status(settings, namespace))

    async def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        described = await run_in_threadpool(launcher.describe_run, run_id)
        return _error(404, f"no run {run_id}") if described is None else _ok(described)

    known_paths = ("/refresh", "/status", "/healthz")

    async def not_found(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {path}")
        if path in known_paths or path.startswith("/runs/"):
            return _error(405, f"{request.method} is not allowed on {path}")
        return _error(404, f"no such endpoint {path}; try POST /refresh or GET /status")

    return Starlette(
        routes=[
            Route("/healthz", endpoint(healthz, auth=False), methods=["GET"]),
            Route("/refresh", endpoint(refresh), methods=["POST"]),
            Route("/status", endpoint(status), methods=["GET"]),
            Route("/runs/{run_id:path}", endpoint(run), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )


class AdminServer:
    """The endpoint on ``KRYTEN_ADMIN_BIND:KRYTEN_ADMIN_PORT``: uvicorn in a thread of its own.

    The socket is bound when the server is made, so a taken port fails at once (naming the setting) and port 0
    has its number before ``start``. ``stop`` stops taking connections and lets requests in flight (a
    ``wait=true`` refresh among them) finish.
    """

    def __init__(self, settings: Settings, launcher: RefreshLauncher, *,
                 body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        check_admin_settings(settings)
        self.settings = settings
        self.launcher = launcher
        self.tls = bool(settings.admin_tls_cert)
        app = build_admin_app(settings, launcher, body_timeout_s=body_timeout_s)
        self._config = uvicorn.Config(
            app, host=settings.admin_bind, port=settings.admin_port, lifespan="off", log_config=None,
            server_header=False, proxy_headers=False, timeout_keep_alive=5,
            # h11, not httptools: it bounds the request head (httptools reads headers of any size).
            http="h11", h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            ssl_certfile=settings.admin_tls_cert, ssl_keyfile=settings.admin_tls_key,
        )
        try:
            self._config.load()  # the TLS certificate and key are read now: a bad one stops the start
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot use the admin endpoint's certificate {settings.admin_tls_cert} / key "
                f"{settings.admin_tls_key}: {exc}", setting="KRYTEN_ADMIN_TLS_CERT",
            ) from None
        try:
            self._socket = self._config.bind_socket()
        except (OSError, SystemExit) as exc:  # uvicorn logs the cause and exits on a bind failure
            reason = getattr(exc, "strerror", None) or "the address is taken or not available here"
            raise ConfigurationError(
                f"cannot listen on {settings.admin_bind}:{settings.admin_port}: {reason}",
                setting="KRYTEN_ADMIN_PORT",
            ) from None
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    @property
    def exposed(self) -> bool:
        """Listening beyond loopback (then serve HTTPS: the token travels in every request)."""
        try:
            return not ipaddress.ip_address(self.settings.admin_bind).is_loopback
        except ValueError:
            return self.settings.admin_bind != "localhost"

    def start(self) -> AdminServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="kryten-admin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigurationError(f"the admin endpoint did not start on {self.url}",
                                         setting="KRYTEN_ADMIN_PORT")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self._socket.close()

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

