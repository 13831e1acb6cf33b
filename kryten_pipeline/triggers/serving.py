"""``kryten-pipeline serve``, ``serve-admin``, ``serve-nats``: the admin endpoint and the NATS refresh command in
one process, until SIGINT/SIGTERM; then neither takes requests and running refreshes are let finish."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from kryten_pipeline.settings import Settings
from kryten_pipeline.triggers.admin_app import AdminServer
from kryten_pipeline.triggers.refresh import RefreshLauncher, run_command_responder


def serve(settings: Settings, instance: Any, *, admin: bool, nats: bool) -> None:
    """Run the admin endpoint and/or the NATS responder until SIGINT/SIGTERM; then let running refreshes end."""
    launcher = RefreshLauncher(instance, settings)
    server = AdminServer(settings, launcher) if admin else None  # refuses before anything starts

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = []
        if server is not None:
            server.start()
            say(f"admin endpoint on {server.url} (POST /refresh, GET /status, GET /runs/ID)")
            if server.exposed and not server.tls:
                say("warning: listening beyond loopback over plain HTTP; the bearer token is in every request: "
                    "set KRYTEN_ADMIN_TLS_CERT and KRYTEN_ADMIN_TLS_KEY, or put TLS in front")
        if nats:
            tasks.append(asyncio.create_task(run_command_responder(
                settings, launcher, stop, on_ready=lambda url, subject: say(f"answering {subject} on {url}"),
            )))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = next((task.exception() for task in tasks if task.done() and task.exception()), None)
        stop.set()
        say("stopping: waiting for running refreshes to finish")
        if server is not None:
            await asyncio.to_thread(server.stop)  # requests in flight (wait=true among them) are answered first
        await asyncio.gather(waiter, *tasks, return_exceptions=True)
        if failed is not None:
            raise failed  # e.g. a NATS configuration error: reported by the CLI as `error: …`

    try:
        asyncio.run(main())
    finally:
        launcher.shutdown(wait=True)
