"""Changing a running fleet under steady streamed load, as `pulumi up` does on the Docker target.

The load balancer is the product's Nginx entry point (`files/nginx/fleet-nginx.sh`, run here as
is): the program writes a new nginx.conf into its volume, and it checks and reloads it.

- Scaling 2 -> 3 -> 2 replicas: no request may fail, the added replica must get traffic, the
  removed one none, and the same Nginx must have reloaded exactly twice.
- A rolling update, as the replica chain runs it: each replica in turn is stopped as `docker
  stop` does (SIGTERM to PID 1, the plan's grace), started again with the same command line,
  waited for until healthy, then its rollout gate (the plan's command) runs, then the next one.
  No request sent after a stop may fail, requests in flight on the stopped replica must complete
  (vLLM drains them: a long generation sent to it just before the stop proves it), and both
  replicas must serve again afterwards.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from support.dataplane import (StreamResult, adapt_nginx_conf, data_plane, nginx_runtime_dir, stream_completion,
                               write_nginx_files)
from support.dataplane import test_config as dataplane_config
from support.processes import docker_stop, log_tail, start, stop, wait_http
from support.real_tools import require_nginx
from support.jobs import start_job, wait_job
from fleet.render.files import nginx_conf

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[2]
WATCHER = ROOT / "files/nginx/fleet-nginx.sh"
MAX_TOKENS = 24
# The generation in flight at a stop: the stop comes once it has streamed its first token, so it is
# running whatever its length; it is sized from the replica's decode rate measured just before, to
# take DRAIN_SHARE of the drain window (drain_timeout_s), so a machine several times slower than
# measured still finishes it inside the window (a fixed 4000 tokens outlasted the 60 s drain on a
# busy run).
DRAIN_SHARE = 0.25
PROMPT_ALLOWANCE = 64  # tokens of the context left to the long generation's prompt
CLIENTS = 2
# Between a client's requests: steady load that still leaves a 2-core machine room to restart a
# replica (without it one restart took over 10 minutes here).
THINK_S = 0.3
# The plan pins each CPU replica's engine to its own cores. On 2 cores, a replica restarted under
# load twice sat confined to the other replica's core (Cpus_allowed_list 1, while still importing
# torch; cause not found: a lone pinned start is not confined) behind that replica's busy engine
# and got no CPU for over 10 minutes. Here only, the replicas run unpinned, one thread each.
UNPINNED = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
ACCESS_LINE = re.compile(r"upstream=(?P<up>.*?) upstream_status=.* request_time=(?P<took>[\d.]+) .*ts=(?P<ts>[\d.]+)$", re.M)


class Load:
    """CLIENTS loops of short streamed completions through the load balancer until stopped."""

    def __init__(self, model: str, headers: dict[str, str], base: str) -> None:
        self.model, self.headers, self.base = model, headers, base
        self.results: list[StreamResult] = []
        self.stop_event = threading.Event()
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.lock = threading.Lock()

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            r = stream_completion(self.base, {"model": self.model, "prompt": "the quick brown fox",
                                              "max_tokens": MAX_TOKENS, "ignore_eos": True},
                                  headers=self.headers, timeout=120)
            with self.lock:
                self.results.append(r)
            self.stop_event.wait(THINK_S)

    def __enter__(self) -> "Load":
        for _ in range(CLIENTS):
            self.pool.submit(self._loop)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=True)

    def between(self, t0: float, t1: float) -> list[StreamResult]:
        with self.lock:
            return [r for r in self.results if t0 <= r.started < t1]

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        start_len = len(self.results)
        while len(self.results) < start_len + n:
            assert time.monotonic() < deadline, f"load made no progress: {len(self.results) - start_len} in {timeout}s"
            time.sleep(0.1)


def complete(r: StreamResult) -> bool:
    return r.ok and r.tokens == MAX_TOKENS  # a drained-but-aborted stream would end early


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)  # as the config job does: cp + mv


@dataclass
class WatchedNginx:
    """The product's Nginx entry point over the harness' replicas."""
    base: str
    log: Path
    proc: object
    apply: Callable[[int], None]  # write nginx.conf for the first n replicas, as `pulumi up` would

    def reloads(self) -> int:
        return self.log.read_text().count("nginx.conf changed, reloaded")

    def served(self) -> list[tuple[float, list[str]]]:
        """(epoch start, upstreams tried) of every request in the access log (`log_format fleet`)."""
        out = []
        for m in ACCESS_LINE.finditer(self.log.read_text()):
            out.append((float(m["ts"]) - float(m["took"]), m["up"].split(", ")))
        return out

    def wait_reloads(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.reloads() < n:
            assert time.monotonic() < deadline, f"Nginx did not reload within {timeout}s\n" + log_tail(self.log)
            time.sleep(0.1)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, "the Nginx entry point exited\n" + log_tail(self.log)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    work = tmp_path_factory.mktemp("rollouts")
    # Three replicas on a 2-core machine: the plan refuses to pin two to one core, and this test
    # unpins them anyway (UNPINNED), so the host declares a core per replica.
    cores = max(3, len(os.sched_getaffinity(0)))
    with data_plane(work, cfg=dataplane_config(replicas=3, cpus=cores), monitoring=False, replica_env=UNPINNED) as dp:
        yield dp


@pytest.fixture(scope="module")
def nginx(plane):
    dp = plane
    runtime = nginx_runtime_dir("vllm-fleet-watched-")
    conf_path = runtime / "nginx.conf"
    dp.nginx.stop()  # the harness' own Nginx; the product's entry point takes its ports

    def apply(n: int) -> None:
        ups = {dp.cfg.models[0].name: [r.address for r in dp.replicas[:n]]}
        write_nginx_files(dp.cfg, runtime, ups)  # before nginx.conf, whose change reloads Nginx: as the program orders them
        write_atomically(conf_path, adapt_nginx_conf(nginx_conf(dp.cfg, ups), listen_port=dp.lb_port,
                                                     status_port=dp.status_port, runtime_dir=runtime))

    apply(2)
    log = dp.workdir / "fleet-nginx.log"
    # The entry point runs `nginx` from PATH, as in the image: the tests' Nginx comes first.
    path = f"{Path(require_nginx()).parent}:{os.environ['PATH']}"
    watcher = start(["/bin/sh", str(WATCHER)], env={**os.environ, "PATH": path, "FLEET_NGINX_CONF": str(conf_path),
                                                    "FLEET_NGINX_POLL_S": "0.5"}, log_path=log)
    try:
        wait_http(f"http://127.0.0.1:{dp.status_port}/stub_status", 30, proc=watcher, log_path=log)
        yield WatchedNginx(dp.lb_url, log, watcher, apply)
    finally:
        stop(watcher, timeout=15)


def test_scaling_2_3_2_under_load_reloads_one_nginx_and_fails_no_request(plane, nginx):
    dp = plane
    reloads = nginx.reloads()
    with Load(dp.model, dp.auth(), nginx.base) as load:
        load.wait_for(8)
        # -- scale 2 -> 3: the third replica starts getting traffic after the reload -------------
        third_before = dp.metric(2, "vllm:request_success_total")
        t_up = time.monotonic()
        nginx.apply(3)
        deadline = time.monotonic() + 30
        while dp.metric(2, "vllm:request_success_total") <= third_before:
            assert time.monotonic() < deadline, "the added replica got no traffic after the reload\n" + log_tail(nginx.log)
            time.sleep(0.2)
        load.wait_for(8)
        # -- scale 3 -> 2: the removed replica finishes what it has and gets nothing new ----------
        nginx.apply(2)
        nginx.wait_reloads(reloads + 2)
        # Old workers accept until the master tells them to quit, just after the reload signal.
        reloaded = time.time() + 1
        load.wait_for(16)
        scaling = load.between(t_up - 1, time.monotonic())
    removed = dp.replicas[2].address
    after = [ups for started, ups in nginx.served() if started > reloaded]
    assert len(after) >= 4, f"the access log shows {len(after)} requests after the reload"
    late = [ups for ups in after if removed in ups]
    assert not late, f"{len(late)} of {len(after)} requests sent to the removed replica after the reload"
    failed = [r for r in scaling if not complete(r)]
    print(f"\nscaling 2->3->2: {len(scaling)} requests, {len(failed)} failed")
    assert scaling and not failed, [r.error for r in failed][:5]
    assert nginx.reloads() - reloads == 2  # one Nginx, reloaded twice
    nginx.assert_alive()


def run_gate(dp, i: int) -> float:
    """Run replica i's rollout gate (the plan's own command and environment, its URL pointed at
    the replica here) until it passed, as `pulumi up` waits for it before touching the next replica."""
    gate = dp.plan.replicas[i].gate
    assert gate is not None and gate.role == "rollout-gate"
    env = {**os.environ, **gate.env, "FLEET_GATE_URL": dp.replicas[i].url + "/health"}
    t0 = time.monotonic()
    proc, mark, log = start_job(gate, env, dp.workdir / f"gate-{i}")
    assert wait_job(proc, mark, timeout=120), log_tail(log)
    return time.monotonic() - t0


def in_flight_tokens(dp, r) -> int:
    """Tokens of a generation that takes DRAIN_SHARE of replica r's drain window at the decode rate
    it shows now (under the test's load)."""
    probe = stream_completion(r.url, {"model": dp.model, "prompt": "once upon a time", "max_tokens": 64,
                                      "ignore_eos": True}, headers=dp.auth(), timeout=120)
    assert probe.ok and probe.tokens == 64, (probe.status, probe.error)
    rate = (probe.chunks - 1) / max(probe.arrivals[-1] - probe.arrivals[0], 1e-3)
    # A fast machine may decode more in that time than the served context holds (vLLM refuses
    # max_tokens above it with a 400): then the longest generation the replica accepts.
    request = urllib.request.Request(r.url + "/v1/models", headers=dp.auth())
    with urllib.request.urlopen(request, timeout=30) as resp:
        context = next(m["max_model_len"] for m in json.load(resp)["data"] if m["id"] == dp.model)
    return max(64, min(int(rate * r.plan.model.drain_timeout_s * DRAIN_SHARE), context - PROMPT_ALLOWANCE))


def test_rolling_restart_one_replica_at_a_time_fails_no_request(plane, nginx):
    """As `pulumi up` replaces the replicas of a model: stop (the planned grace), start, healthy,
    the rollout gate, then the next one."""
    dp = plane
    nginx.apply(2)  # the fleet is 2 replicas (a no-op after the scaling test)
    stop(dp.replicas[2].proc, timeout=30)  # scaled away: `pulumi up` removes its container
    report = []
    with Load(dp.model, dp.auth(), nginx.base) as load:
        load.wait_for(8)
        for i in (0, 1):
            r = dp.replicas[i]
            # A long generation on this very replica, surely in flight at the stop: it has streamed
            # its first token, so vLLM's scheduler runs it. (A request still on its way into the
            # engine when SIGTERM arrives is not drained but aborted: 200, no token. A fixed sleep
            # before the stop let a busy machine produce exactly that.)
            long_tokens = in_flight_tokens(dp, r)
            body = {"model": dp.model, "prompt": "once upon a time", "max_tokens": long_tokens, "ignore_eos": True}
            running = threading.Event()
            with ThreadPoolExecutor(1) as pool:
                streaming = pool.submit(stream_completion, r.url, body, headers=dp.auth(), timeout=300,
                                        first_token=running)
                assert running.wait(120), f"the long generation on {r.name} never started: {streaming.result()}"
                t_stop = time.monotonic()
                docker_stop(r.proc, r.plan.containers[0].stop_grace_s)  # SIGTERM: vLLM drains (--shutdown-timeout)
                t_stopped = time.monotonic()
                drained = streaming.result()
            assert drained.ok and drained.tokens == long_tokens and drained.ended > t_stop, (
                f"the generation in flight on {r.name} was not drained: {drained.status} {drained.tokens} {drained.error}")
            r.start()  # the replacement: same command line and environment
            r.wait_ready()
            t_ready = time.monotonic()
            gate_s = run_gate(dp, i)
            load.wait_for(4)
            window = load.between(t_stop - 120, time.monotonic())
            in_flight = [x for x in window if x.started < t_stop <= x.ended]
            new = [x for x in window if x.started >= t_stop]
            cut = [x for x in in_flight if not complete(x)]
            failed_new = [x for x in new if not complete(x)]
            report.append(f"restart {r.name}: stop took {t_stopped - t_stop:.1f} s, healthy after {t_ready - t_stop:.0f} s, "
                          f"gate {gate_s:.0f} s; {len(new)} new requests meanwhile, {len(failed_new)} failed; "
                          f"{len(in_flight)} through Nginx in flight at the stop, {len(cut)} of them cut; "
                          f"a {long_tokens}-token generation on it finished {drained.ended - t_stop:.1f} s after SIGTERM")
            assert new and not failed_new, [(x.status, x.tokens, x.error) for x in failed_new][:5]
            assert not cut, f"requests in flight on {r.name} were not drained: {[(x.status, x.tokens, x.error) for x in cut][:5]}"
        # -- the restarted replicas both serve again -------------------------------------------
        before = [dp.metric(i, "vllm:request_success_total") for i in (0, 1)]
        deadline = time.monotonic() + 60
        while not all(dp.metric(i, "vllm:request_success_total") > b for i, b in enumerate(before)):
            assert time.monotonic() < deadline, f"a restarted replica gets no traffic: {before}"
            time.sleep(0.5)
    print("\n" + "\n".join(report))
    nginx.assert_alive()
