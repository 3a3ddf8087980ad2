"""Servers as real processes, on ports they bind themselves and report back (``--ports-file``);
and what the kernel says about a process's state (stopped, exited), for tests that freeze or
kill processes the way a crashed pod is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from services.common.listening import read_ports
from tests.support.waiting import wait_serving, wait_until

ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within `timeout`; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def launch_server(module: str, args: list[str], ports_file: Path, log_path: Path,
                  env: dict | None = None) -> subprocess.Popen:
    """`python -m module` on ports it binds itself, reported in `ports_file` once it listens."""
    ports_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", module, "--port", "0", "--metrics-port", "auto",
                                 "--ports-file", str(ports_file), *args],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def await_server(proc: subprocess.Popen, service: str, ports_file: Path, timeout: float = 60.0) -> str:
    """The gRPC target of a launched server, once it has reported its ports and its health check
    says SERVING; fails at once if the process exits meanwhile."""
    ports = wait_until(lambda: read_ports(ports_file), timeout, f"{service} to report its ports", proc)
    assert ports["pid"] == proc.pid, ports
    target = f"127.0.0.1:{ports['grpc']}"
    wait_serving(target, service, timeout, proc)
    return target


def spawn_server(module: str, service: str, args: list[str], ports_file: Path, log_path: Path,
                 env: dict | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Launch and await one server: (process, target). A server that fails to get there is killed."""
    proc = launch_server(module, args, ports_file, log_path, env)
    try:
        return proc, await_server(proc, service, ports_file, timeout)
    except BaseException:
        stop_process(proc, 5)
        raise


def thread_states(pid: int) -> list[str]:
    """The scheduler state of every thread of the process ([] once it is gone)."""
    states = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a thread that just ended
    return states


def is_stopped(pid: int) -> bool:
    """SIGSTOP has landed: every thread of the process is stopped."""
    states = thread_states(pid)
    return bool(states) and all(s in ("T", "t") for s in states)


def has_exited(pid: int) -> bool:
    """The process has exited (a zombie awaiting its new parent's reaping counts as exited)."""
    return all(s in ("Z", "X") for s in thread_states(pid))
