"""Run ``kryten-pipeline`` commands in forked children of one pre-imported interpreter (tests only).

``python -m kryten_pipeline.cli`` spends ~2.5 s importing Dagster, pandas and pandera before it does
anything; the crash-consistency suite starts ~100 CLI processes. The zygote imports those third-party
packages once and forks a child per command; the child sets the command's environment and working
directory and calls ``kryten_pipeline.cli.main`` — it imports every ``kryten_pipeline`` module itself, after
the environment is set, exactly as a fresh CLI process does. A child is a real process: SIGKILL at a fault
point kills it alone, and the kernel releases its locks as for any CLI process.

Protocol (JSON lines): request ``{"args", "env", "cwd", "out", "err"}`` on stdin; the zygote answers
``{"pid"}`` at once, then ``{"returncode"}`` (negative: the signal that killed it) when the child has ended.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any


def serve() -> None:
    import dagster  # noqa: F401  (the expensive imports, done once; nothing of kryten_pipeline here)
    import dagster_pandera  # noqa: F401
    import httpx  # noqa: F401
    import nats  # noqa: F401
    import pandas  # noqa: F401
    import pandera.pandas  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(request: dict[str, Any]) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        sys.argv = ["kryten-pipeline", *request["args"]]
        from kryten_pipeline import cli

        code = cli.main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Zygote:
    """The test side: ``run(...)`` behaves like ``subprocess.run([python, -m, kryten_pipeline.cli, ...])``."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="zygote-", dir=scratch))
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, "-m", "kryten_pipeline_tests.cli_zygote"],
                                     cwd=Path(__file__).resolve().parents[1],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"no answer from the CLI zygote within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the CLI zygote exited")
        return json.loads(line)

    def run(self, workdir: Path, *args: str, env: dict[str, str], timeout: float = 240
            ) -> subprocess.CompletedProcess[str]:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"args": list(args), "env": env, "cwd": str(workdir),
                                          "out": str(out), "err": str(err)}) + "\n")
        self.proc.stdin.flush()
        pid = self._reply(30)["pid"]
        try:
            code = self._reply(timeout)["returncode"]
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)  # our own child's process group
            code = self._reply(30)["returncode"]
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        out.unlink()
        err.unlink()
        return subprocess.CompletedProcess(["kryten-pipeline", *args], code, stdout, stderr)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve()
