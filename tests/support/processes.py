"""Process helpers for live tests.

Every process is started in a new session (so its own process group) and is
stopped by signalling that group only: never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def start(cmd: list[str], *, env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``cmd`` in a new process group; stdout and stderr go to ``log_path``.

    ``env`` is the complete environment of the child (merge ``os.environ`` in
    yourself if you want it).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # The child holds its own copy of the descriptor; closing ours is fine.
        return subprocess.Popen(
            [str(c) for c in cmd],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # With start_new_session=True the group id is the child's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def docker_stop(proc: subprocess.Popen, grace_s: float) -> int | None:
    """Stop ``proc`` as `docker stop -t grace_s` stops a container: SIGTERM to the leader only (a
    container's PID 1), then, after ``grace_s``, the whole group is stopped (SIGKILL if need be)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    return stop(proc, timeout=5)


def stop(proc: subprocess.Popen, timeout: float = 20) -> int | None:
    """SIGTERM the process group of ``proc``; SIGKILL it after ``timeout`` seconds.

    Also waits (briefly) for the rest of the group, e.g. vLLM's engine-core
    child, to go away. Returns the leader's exit code. Idempotent.
    """
    if proc.poll() is not None and not _group_alive(proc.pid):
        return proc.returncode
    deadline = time.monotonic() + timeout
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None or _group_alive(proc.pid):
        _signal_group(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        end = time.monotonic() + 5
        while _group_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.1)
    return proc.returncode


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Unlike ``_group_alive`` (a signal probe),
    zombies do not count: orphans of a killed group may wait long for init to reap them."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def kill(proc: subprocess.Popen, timeout: float = 10, *, wait: bool = True) -> int | None:
    """SIGKILL the process group of ``proc`` at once (a crash, not a shutdown). With ``wait``,
    returns when no process of the group runs any more (a big process can take seconds to die)."""
    _signal_group(proc, signal.SIGKILL)
    if not wait:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    end = time.monotonic() + timeout
    while _group_running(proc.pid) and time.monotonic() < end:
        time.sleep(0.01)
    return proc.returncode


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (racy by nature; use promptly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log_path: Path | None, lines: int = 60) -> str:
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {log_path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``condition()`` until it holds; an AssertionError once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        time.sleep(interval)


def logged_after(log_path: Path, send: Callable[[], T], matches: Callable[[str], bool],
                 timeout: float = 10.0) -> tuple[T, str]:
    """``send()``'s result and the first line matching ``matches`` that the log gained since.

    Nginx writes a request's access-log line as it finalizes the request, which may trail the
    client's read of the response; an earlier request's line may arrive later still. So: count the
    lines, send, and wait for this request's line among the new ones."""
    before = len(Path(log_path).read_text(errors="replace").splitlines())
    result = send()
    found: list[str] = []

    def arrived() -> bool:
        new = Path(log_path).read_text(errors="replace").splitlines()[before:]
        found[:] = [line for line in new if matches(line)][:1]
        return bool(found)

    wait_until(arrived, timeout)
    return result, found[0]


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    interval: float = 0.5,
) -> float:
    """Poll ``url`` until it answers HTTP 200; return the seconds it took.

    Raises ``RuntimeError`` (with the log tail) if ``proc`` exits first, or
    ``TimeoutError`` (with the log tail) once ``timeout`` seconds have passed.
    """
    t0 = time.monotonic()
    last = "no answer yet"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode} before {url} "
                f"was ready\n--- log tail ({log_path}) ---\n{log_tail(log_path)}"
            )
        try:
            req = urllib.request.Request(url, headers=dict(headers or {}))
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(
                f"{url} not ready after {timeout:.0f}s (last: {last})\n"
                f"--- log tail ({log_path}) ---\n{log_tail(log_path)}"
            )
        time.sleep(interval)


@contextlib.contextmanager
def running(
    cmd: list[str],
    env: Mapping[str, str],
    log_path: Path,
    health_url: str,
    timeout: float,
    *,
    stop_timeout: float = 20,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd``, wait for ``health_url`` to answer 200, yield the process.

    ``stop()`` runs on every exit path: startup failure, timeout, exceptions in
    the body, KeyboardInterrupt. ``proc.startup_seconds`` holds the wait time.
    """
    proc = start(cmd, env=env, log_path=log_path)
    try:
        proc.startup_seconds = wait_http(health_url, timeout, proc=proc, log_path=log_path)  # type: ignore[attr-defined]
        yield proc
    finally:
        stop(proc, timeout=stop_timeout)
