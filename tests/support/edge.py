"""The rendered Nginx with njs in front of fake replicas on loopback, for the fast tier's edge tests
(model routing, prefix affinity): each fake replica answers with its own name, the path and a
digest of the body it received, so a test can say which replica a request reached and that it
arrived unchanged; a request whose query has `hold` waits until the replica is released."""
from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleet.config.schema import FleetConfig
from fleet.render.files import nginx_conf
from support.dataplane import adapt_nginx_conf, nginx_argv, nginx_runtime_dir, wait_port, write_nginx_files
from support.processes import free_port, start, stop
from support.real_tools import require_nginx


class _Echo(http.server.BaseHTTPRequestHandler):
    """A replica that says who it is and what it got; with a `key`, it answers 401 without it, as
    vLLM's --api-key does."""
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "hold" in self.path.partition("?")[2]:
            with self.server.lock:
                self.server.holding += 1
            self.server.release.wait(30)
            with self.server.lock:
                self.server.holding -= 1
        out = json.dumps({"upstream": self.server.label, "method": self.command, "path": self.path,
                          "body_sha256": hashlib.sha256(body).hexdigest()}).encode()
        status = 200
        if self.server.key and self.headers.get("Authorization") != f"Bearer {self.server.key}":
            status, out = 401, b'{"error": "Unauthorized"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


def echo_upstream(label: str, key: str | None = None) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.label, server.key = label, key
    server.lock, server.holding, server.release = threading.Lock(), 0, threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Gateway:
    cfg: FleetConfig
    port: int
    runtime: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def post(self, path: str, doc, headers: Mapping[str, str] | None = None) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(doc).encode(), headers)


@contextmanager
def gateways(logdir) -> Iterator:
    """Yields `make(cfg, upstreams) -> Gateway` (upstreams: model name -> servers), which starts the
    rendered Nginx for that config; every Nginx started is stopped by its process group on exit.
    `logdir()` gives a fresh directory for each one's log."""
    started: list[tuple] = []

    def make(cfg: FleetConfig, upstreams: dict[str, list[str]]) -> Gateway:
        require_nginx()
        runtime = nginx_runtime_dir("vllm-fleet-routing-")
        port = free_port()
        conf = adapt_nginx_conf(nginx_conf(cfg, upstreams), listen_port=port, status_port=free_port(), runtime_dir=runtime)
        (runtime / "nginx.conf").write_text(conf)
        write_nginx_files(cfg, runtime, upstreams)
        log = logdir() / "nginx.log"
        proc = start(nginx_argv(runtime, runtime / "nginx.conf"), env=dict(os.environ), log_path=log)
        started.append((proc, runtime))
        wait_port(port, 30, proc, log)
        return Gateway(cfg, port, runtime, log)

    try:
        yield make
    finally:
        for proc, runtime in started:
            stop(proc, timeout=10)
            shutil.rmtree(runtime, ignore_errors=True)
