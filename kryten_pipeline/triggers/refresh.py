"""Refresh triggers for the kryten ecosystem: a NATS request/reply command and an admin HTTP endpoint.

Both hand the refresh to :class:`RefreshLauncher`, which runs the same Dagster job the UI launches, each
in a child process, recorded in the Dagster instance (so each run shows in the UI) — the one code path
of ``dagster_defs.refresh_runs.execute_refresh``. Two refreshes of one namespace never
interleave: the pipeline resource holds the namespace's refresh lock for the whole run.

- NATS: ``{prefix}.playlist.cmd.catalog_refresh`` (prefix ``KRYTEN_NATS_SUBJECT_PREFIX``), request
  ``{"correlation_id", "namespace", "requested_by", "wait"}``; reply
  ``{"correlation_id", "status": "ok"|"error"|"accepted", "snapshot_id", "run_id", "error", "namespace"}``.
- HTTP (seed 000 REQ-001): ``POST /refresh?namespace=NS[&wait=true]``, ``GET /status?namespace=NS``,
  ``GET /runs/RUN_ID``, ``GET /healthz``; bearer token ``KRYTEN_ADMIN_TOKEN``: ``kryten_pipeline.triggers.admin_app``.
``kryten_pipeline.triggers.serving`` runs both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kryten_pipeline.errors import ConfigurationError, KrytenError, NatsUnavailableError
from kryten_pipeline.kv.connection import NatsConnectionSettings, connect_nats, redact_url
from kryten_pipeline.kv.embedded_nats import EmbeddedNats
from kryten_pipeline.namespaces import validate_namespace
from kryten_pipeline.settings import Settings

logger = logging.getLogger(__name__)

MAX_TAG_CHARS = 200
MAX_REMEMBERED_RUNS = 1000
COMMAND_QUEUE_GROUP = "kryten-pipeline"
TRUE_WORDS = ("1", "true", "yes", "on")


def command_subject(prefix: str) -> str:
    return f"{prefix}.playlist.cmd.catalog_refresh"


def tag_value(value: object) -> str:
    """A value as a run tag: one line, at most MAX_TAG_CHARS characters."""
    text = str(value).replace("\n", " ").strip()
    return text[:MAX_TAG_CHARS]


# -- launching --------------------------------------------------------------------------------------


class RefreshLauncher:
    """Runs each refresh in a fresh child process, as a run of the Dagster instance.

    Not in threads of this process: Dagster reconfigures process-wide logging when a run starts and
    redirects the process's stdout/stderr to capture step logs, neither of which is safe with two runs
    in one process. Children are forked from a ``forkserver`` that has the pipeline imported, so a run
    starts quickly; each child builds the code location's definitions from the environment (plus
    ``environ``) and opens the instance from its ref — the same instance the UI shows.
    """

    def __init__(self, instance: Any, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 max_workers: int = 4) -> None:
        self.instance = instance
        self.settings = settings
        self.environ = dict(environ or {})
        try:
            self._instance_ref = instance.get_ref()
        except Exception as exc:  # an ephemeral instance has no ref a child could open
            raise ConfigurationError(
                f"refresh triggers need a persistent Dagster instance: {exc}", setting="DAGSTER_HOME"
            ) from None
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["kryten_pipeline.dagster_defs.refresh_runs", "kryten_pipeline.definitions"])
        self._processes = ProcessPoolExecutor(max_workers=max_workers, mp_context=context, max_tasks_per_child=1)
        self._waiters = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kryten-refresh")
        self._lock = threading.Lock()
        self._submitted: dict[str, tuple[str, Future[dict[str, Any]]]] = {}

    def resolve_namespace(self, namespace: str | None) -> str:
        """The namespace to refresh (default: the first configured); ConfigurationError if unknown."""
        from kryten_pipeline.dagster_defs.refresh_runs import ensure_namespace_registered

        name = namespace if namespace else self.settings.namespaces[0]
        validate_namespace(name)
        ensure_namespace_registered(self.instance, self.settings, name)
        return name

    def submit(self, namespace: str, *, tags: dict[str, str]) -> tuple[str, Future[dict[str, Any]]]:
        """Start a refresh of ``namespace``; returns its run id at once and a future of its summary."""
        from kryten_pipeline.dagster_defs.refresh_runs import new_run_id

        run_id = new_run_id()
        future = self._waiters.submit(self._run, namespace, dict(tags), run_id)
        with self._lock:
            self._submitted[run_id] = (namespace, future)
            if len(self._submitted) > MAX_REMEMBERED_RUNS:  # a long-lived server: forget finished ones
                for old in [rid for rid, (_ns, f) in self._submitted.items() if f.done()][:len(self._submitted) // 2]:
                    del self._submitted[old]
        return run_id, future

    def _run(self, namespace: str, tags: dict[str, str], run_id: str) -> dict[str, Any]:
        try:
            child = self._processes.submit(
                refresh_in_child, self._instance_ref, namespace, tags, run_id, self.environ
            )
            return child.result()
        except Exception as exc:  # the child could not run it (or died): report it like a failed run
            logger.error("refresh of %s (run %s) could not run: %s", namespace, run_id, exc)
            return {"success": False, "namespace": namespace, "run_id": run_id, "snapshot_id": None,
                    "error": f"{type(exc).__name__}: {exc}"}

    def describe_run(self, run_id: str) -> dict[str, Any] | None:
        """Status of a run (from the instance; PENDING until its process has started it)."""
        from kryten_pipeline.dagster_defs.refresh_runs import summarize_run

        run = self.instance.get_run_by_id(run_id)
        with self._lock:
            submitted = self._submitted.get(run_id)
        if run is None:
            if submitted is None:
                return None
            namespace, future = submitted
            if future.done():
                summary = future.result()
                return {"run_id": run_id, "namespace": namespace, "status": "FAILURE",
                        "snapshot_id": None, "error": summary.get("error")}
            return {"run_id": run_id, "namespace": namespace, "status": "PENDING", "snapshot_id": None, "error": None}
        namespace = run.tags.get("dagster/partition", submitted[0] if submitted else "")
        described = {"run_id": run_id, "namespace": namespace, "status": run.status.value,
                     "job": run.job_name, "snapshot_id": None, "error": None}
        if run.is_finished:
            summary = summarize_run(self.instance, run_id, namespace)
            described["snapshot_id"] = summary.get("snapshot_id") if run.is_success else None
            described["error"] = None if run.is_success else (summary.get("error") or "run failed")
        return described

    def shutdown(self, *, wait: bool = True) -> None:
        self._waiters.shutdown(wait=wait, cancel_futures=not wait)
        self._processes.shutdown(wait=wait, cancel_futures=not wait)


def refresh_in_child(instance_ref: Any, namespace: str, tags: dict[str, str], run_id: str,
                     environ: dict[str, str]) -> dict[str, Any]:
    """Child-process side of RefreshLauncher: one refresh, its summary back to the parent."""
    import dagster as dg

    from kryten_pipeline.dagster_defs.refresh_runs import execute_refresh
    from kryten_pipeline.definitions import build_definitions

    os.environ.update(environ)
    instance = dg.DagsterInstance.from_ref(instance_ref)
    try:
        return execute_refresh(instance, namespace, tags=tags, run_id=run_id, definitions=build_definitions())
    finally:
        instance.dispose()


def run_outcome(summary: dict[str, Any]) -> dict[str, Any]:
    """The fields a trigger reports about a finished run."""
    ok = bool(summary.get("success"))
    return {
        "status": "ok" if ok else "error",
        "namespace": summary.get("namespace"),
        "run_id": summary.get("run_id"),
        "snapshot_id": summary.get("snapshot_id") if ok else None,
        "error": None if ok else (summary.get("error") or "refresh failed"),
    }


# -- NATS request/reply -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshCommand:
    correlation_id: str | None
    namespace: str | None
    requested_by: str | None
    wait: bool = True


class BadCommandError(ValueError):
    def __init__(self, reason: str, correlation_id: str | None = None) -> None:
        super().__init__(reason)
        self.correlation_id = correlation_id


def parse_refresh_command(data: bytes) -> RefreshCommand:
    """Decode a ``catalog_refresh`` request; BadCommandError says what is wrong with it."""
    try:
        body = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadCommandError(f"request is not UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadCommandError("request must be a JSON object")
    raw_cid = body.get("correlation_id")
    if raw_cid is not None and not isinstance(raw_cid, (str, int)):
        raise BadCommandError("correlation_id must be a string")
    cid = None if raw_cid is None else str(raw_cid)
    namespace = body.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise BadCommandError("namespace must be a string", cid)
    requested_by = body.get("requested_by")
    if requested_by is not None and not isinstance(requested_by, str):
        raise BadCommandError("requested_by must be a string", cid)
    wait = body.get("wait", True)
    if not isinstance(wait, bool):
        raise BadCommandError("wait must be true or false", cid)
    return RefreshCommand(cid, namespace or None, requested_by, wait)


class RefreshCommandResponder:
    """Answers ``catalog_refresh`` requests on one subject (in a queue group, so replicas share the load)."""

    def __init__(self, launcher: RefreshLauncher, subject: str, *, queue: str = COMMAND_QUEUE_GROUP) -> None:
        self.launcher = launcher
        self.subject = subject
        self.queue = queue
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def attach(self, nc: Any) -> None:
        self._sub = await nc.subscribe(self.subject, queue=self.queue, cb=self._on_message)

    async def detach(self) -> None:
        """Stop taking requests; wait until every accepted one has been answered."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _on_message(self, msg: Any) -> None:
        # nats-py runs a subscription's callbacks one after another: a waiting request must not block the next.
        task = asyncio.create_task(self.handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, msg: Any) -> None:
        reply = await self.answer(msg.data)
        if not msg.reply:
            return  # a plain publish: the refresh runs, nobody is waiting for an answer
        try:
            await msg.respond(json.dumps(reply).encode("utf-8"))
        except Exception as exc:  # the requester may be gone; the run is recorded anyway
            logger.warning("could not answer catalog_refresh request %s: %s", reply.get("correlation_id"), exc)

    async def answer(self, data: bytes) -> dict[str, Any]:
        reply: dict[str, Any] = {"correlation_id": None, "status": "error", "snapshot_id": None, "run_id": None,
                                 "error": None, "namespace": None}
        try:
            command = parse_refresh_command(data)
        except BadCommandError as exc:
            reply.update(correlation_id=exc.correlation_id, error=f"bad request: {exc}")
            return reply
        reply["correlation_id"] = command.correlation_id
        try:
            namespace = await asyncio.to_thread(self.launcher.resolve_namespace, command.namespace)
        except KrytenError as exc:
            reply.update(error=f"bad request: {exc}", namespace=command.namespace)
            return reply
        tags = {"kryten/trigger": "nats"}
        if command.requested_by:
            tags["kryten/requested_by"] = tag_value(command.requested_by)
        if command.correlation_id:
            tags["kryten/correlation_id"] = tag_value(command.correlation_id)
        run_id, future = self.launcher.submit(namespace, tags=tags)
        logger.info("catalog_refresh %s for %s by %s: run %s", command.correlation_id, namespace,
                    command.requested_by or "-", run_id)
        if not command.wait:
            reply.update(status="accepted", run_id=run_id, namespace=namespace)
            return reply
        summary = await asyncio.wrap_future(future)
        reply.update(run_outcome(summary))
        return reply


async def run_command_responder(
    settings: Settings, launcher: RefreshLauncher, stop: asyncio.Event,
    *, on_ready: Callable[[str, str], None] | None = None,
) -> None:
    """Serve ``catalog_refresh`` on NATS_URL (or this data dir's embedded server) until ``stop`` is set.

    Reconnects with backoff when the connection is lost; on stop, answers the requests it accepted
    (their runs finish) before closing.
    """
    subject = command_subject(settings.nats_subject_prefix)
    embedded: EmbeddedNats | None = None
    if settings.nats_url:
        url = settings.nats_url
        conn = NatsConnectionSettings.from_settings(settings)
    else:
        embedded = EmbeddedNats(settings.data_dir)
        url = await asyncio.to_thread(embedded.acquire)
        conn = NatsConnectionSettings(url=url)
    responder = RefreshCommandResponder(launcher, subject)
    backoff = 1.0
    announced = False
    try:
        while not stop.is_set():
            try:
                nc = await connect_nats(conn, url)
            except NatsUnavailableError as exc:
                logger.warning("%s; retrying in %.0f s", exc, backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            try:
                await responder.attach(nc)
                await nc.flush()
                if on_ready is not None and not announced:
                    on_ready(redact_url(url), subject)
                    announced = True
                while not stop.is_set() and not nc.is_closed:
                    await _wait(stop, 0.5)
                if not stop.is_set():
                    logger.warning("NATS connection to %s closed; reconnecting", redact_url(url))
            finally:
                await responder.detach()
                with contextlib.suppress(Exception):
                    await nc.drain()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.release)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
