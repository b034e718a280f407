"""Starting and stopping the balancers under test: an Nginx on a directory of rendered files, and
vllm-router. Each runs in its own process group (tests/support/processes.py) and is stopped by
that group on every exit path; each variant run gets a fresh process (clean balancer state, its
own access log).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from support.processes import (  # tests/ is on sys.path (stdlib-only module)
    log_tail,
    start,
    stop,
    wait_http,
)


def wait_port(port: int, proc, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}:\n{log_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s:\n{log_tail(log)}")
        time.sleep(0.05)


@contextlib.contextmanager
def nginx(binary: str, runtime: Path, port: int, log: Path, env: dict | None = None) -> Iterator[tuple[str, Path]]:
    """Nginx on `runtime`/nginx.conf (fleet.js, models.json, keys.json beside it), listening on
    `port`; yields (its URL, its log: the access log goes to stdout in the rendered config)."""
    argv = [binary, "-e", "stderr", "-p", str(runtime), "-c", str(runtime / "nginx.conf"), "-g", "daemon off;"]
    proc = start(argv, env=env or dict(os.environ), log_path=log)
    try:
        wait_port(port, proc, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(proc, timeout=10)


@contextlib.contextmanager
def vllm_router(workers: list[str], port: int, log: Path, *, policy: str = "cache_aware", python: str = sys.executable,
                api_key: str | None = None, env: dict | None = None) -> Iterator[tuple[str, None]]:
    """vllm-router (`python -m vllm_router.launch_router`, what its console script runs) over `workers`."""
    argv = [python, "-m", "vllm_router.launch_router", "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--worker-urls", *workers, "--log-level", "warning", *(["--api-key", api_key] if api_key else [])]
    proc = start(argv, env=env or dict(os.environ), log_path=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc=proc, log_path=log, interval=0.2)
        yield f"http://127.0.0.1:{port}", None
    finally:
        stop(proc, timeout=10)
