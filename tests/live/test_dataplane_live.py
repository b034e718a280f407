"""The data plane the program deploys, proven with the real programs on loopback.

One module-scoped data plane (tests/support/dataplane.py): two real vLLM servers started with the
exact argv and environment the plan generates (the tiny dummy-weight model, each on its own core),
Nginx with the rendered nginx.conf, the Nginx exporter and Prometheus with the rendered config and
alert rules. Startup takes one to two minutes; the tests that kill a replica come last and bring
it back. Numbers are printed (`pytest -s` shows them).
"""
from __future__ import annotations

import json
import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.dataplane import (
    DataPlane, StreamResult, call, data_plane, seed_nginx_conf, stream_completion,
)
from support.grafana_queries import dashboard_queries
from support.lockstep import Exchange, LockstepUpstream, record
from support.processes import free_port
from support.real_tools import require_nginx
from support.stacks import require_tool

pytestmark = pytest.mark.live

PROMPT = "Please write a short story about a cat and a dog."


def report(title: str, **numbers) -> None:
    print(f"\n[dataplane] {title}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


@pytest.fixture(scope="module")
def dp(tmp_path_factory) -> DataPlane:
    require_nginx()
    require_tool("prometheus")
    with data_plane(tmp_path_factory.mktemp("dataplane")) as plane:
        report("startup seconds", **plane.startup_s)
        yield plane


def complete(dp: DataPlane, base: str | None = None, *, key="default", headers=None, timeout: float = 120,
             **body) -> tuple[int, dict | str]:
    status, text = call(base or dp.lb_url, "/v1/completions", {"model": dp.model, "prompt": PROMPT, **body},
                        headers={**dp.auth(key), **(headers or {})}, timeout=timeout)
    return status, (json.loads(text) if status == 200 else text)


def texts(out: dict) -> list[str]:
    return [c["text"] for c in out["choices"]]


def served_by_lb(dp: DataPlane, n: int, *, headers=None, **body) -> list[int]:
    """Send n short completions one after another through the LB; the replica index of each."""
    out = []
    for _ in range(n):
        replica, (status, res) = dp.served_by(lambda: complete(dp, headers=headers, max_tokens=4, **body))
        assert status == 200, res
        out.append(replica)
    return out


class LongStream:
    """A streamed generation held open in the background to keep one replica busy: `n`
    sequences of up to 4000 tokens (tens of seconds), cut by the client on exit."""

    def __init__(self, dp: DataPlane, base: str, n: int = 16):
        self.stop = threading.Event()
        self.result: StreamResult | None = None
        body = {"model": dp.model, "prompt": "hello", "max_tokens": 4000, "ignore_eos": True, "n": n,
                "temperature": 1.0}
        self.thread = threading.Thread(target=lambda: setattr(self, "result", stream_completion(
            base, body, headers=dp.auth(), stop_event=self.stop)), daemon=True)

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and self.result is None

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def busy_replica(dp: DataPlane, timeout: float = 10) -> int:
    """The one replica that reports running requests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [dp.metric(i, "vllm:num_requests_running") for i in range(len(dp.replicas))]
        busy = [i for i, n in enumerate(running) if n > 0]
        if len(busy) == 1:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError(f"no single busy replica: running={running}")


@pytest.fixture(autouse=True)
def idle_replicas(request):
    """Each test starts with no request running anywhere (aborted streams of the previous test
    are counted by then, so per-replica counters attribute requests exactly)."""
    if "dp" in request.fixturenames:
        request.getfixturevalue("dp").wait_idle()
    yield


# --- 1. balancing policies --------------------------------------------------------------------


@pytest.mark.parametrize("policy, expected", [
    ("least_conn", "every short request goes to the idle replica"),
    ("round_robin", "short requests alternate, busy or not"),
])
def test_policy_decides_where_requests_go_while_one_replica_is_busy(dp, policy, expected):
    dp.start_nginx(policy)
    with LongStream(dp, dp.lb_url) as long:
        busy = busy_replica(dp)
        where = served_by_lb(dp, 8)
        assert long.running, "the long stream ended before the short requests: nothing was proven"
    on_busy = where.count(busy)
    report(f"{policy}: 8 short requests while replica {busy} streams a long one", on_busy=on_busy,
           on_idle=8 - on_busy, sequence=where)
    if policy == "least_conn":
        assert on_busy == 0, f"least_conn sent {on_busy}/8 requests to the busy replica: {where}"
    else:
        assert on_busy == 4, f"round robin should alternate, got {where}"
        assert all(a != b for a, b in zip(where, where[1:])), where


def test_round_robin_spreads_sequential_requests_evenly(dp):
    dp.start_nginx("round_robin")
    where = served_by_lb(dp, 10)
    report("round_robin: 10 sequential requests", per_replica=[where.count(i) for i in range(len(dp.replicas))])
    assert [where.count(i) for i in range(len(dp.replicas))] == [5, 5], where


def test_session_affinity_pins_each_session_to_one_replica_and_spreads_sessions(dp):
    dp.start_nginx("session_affinity")
    header = dp.cfg.load_balancer.session_header
    placement = {}
    for s in range(16):
        seen = set(served_by_lb(dp, 3, headers={header: f"session-{s}"}))
        assert len(seen) == 1, f"session-{s} reached replicas {seen}"
        placement[f"session-{s}"] = seen.pop()
    per_replica = [list(placement.values()).count(i) for i in range(len(dp.replicas))]
    report("session_affinity: 16 sessions x 3 requests", sessions_per_replica=per_replica)
    assert all(per_replica), f"every session went to one replica: {placement}"
    # after a restart of the balancer, the same sessions land on the same replicas (a hash, no state)
    dp.start_nginx("session_affinity")
    for sid, replica in list(placement.items())[:4]:
        assert set(served_by_lb(dp, 1, headers={header: sid})) == {replica}
    dp.start_nginx("least_conn")


# --- 2. streaming passes unbuffered -----------------------------------------------------------


def test_first_token_through_the_balancer_is_as_fast_as_direct(dp):
    """Pairs of streamed requests to the same replica, one through Nginx and one direct, back to
    back in alternating order (round robin makes the balancer's next replica known), so the
    replicas' different speeds and this machine's drift cancel out of each difference."""
    dp.start_nginx("round_robin")
    body = {"model": dp.model, "prompt": PROMPT, "max_tokens": 16, "ignore_eos": True}
    stream = lambda base: stream_completion(base, body, headers=dp.auth())  # noqa: E731
    for r in dp.replicas:  # warm the keepalive connections
        stream(dp.lb_url)
    dp.wait_idle()
    diffs, direct_ms, lb_ms = [], [], []
    replica, lb = dp.served_by(lambda: stream(dp.lb_url))
    for i in range(20):
        nxt = 1 - replica
        if i % 2:
            direct = stream(dp.replicas[nxt].url)
            dp.wait_idle()
            replica, lb = dp.served_by(lambda: stream(dp.lb_url))
            assert replica == nxt, "round robin did not alternate"
        else:
            replica, lb = dp.served_by(lambda: stream(dp.lb_url))
            direct = stream(dp.replicas[replica].url)
        dp.wait_idle()
        assert lb.ok and direct.ok, (lb.error, direct.error)
        direct_ms.append(direct.ttft_s * 1000)
        lb_ms.append(lb.ttft_s * 1000)
        diffs.append(lb_ms[-1] - direct_ms[-1])
    report("TTFT ms, 20 pairs (same replica, alternating order)", direct_median=round(statistics.median(direct_ms), 1),
           lb_median=round(statistics.median(lb_ms), 1), median_of_differences=round(statistics.median(diffs), 1))
    assert statistics.median(diffs) < 15, f"Nginx adds {statistics.median(diffs):.1f} ms to the first token"


# Nginx settings that make it hold tokens back, to show the lockstep check fails on them: with
# proxy buffering on, gzip compresses the event stream in blocks (either one alone still flushes
# every chunk; measured with nginx 1.22).
HOLDING_NGINX = {"proxy_buffering off;": "proxy_buffering on;",
                 "gzip off;": "gzip on; gzip_types text/event-stream; gzip_min_length 1;"}


def test_every_token_reaches_the_client_before_the_replica_sends_the_next(dp):
    """Each token of a real replica's stream, replayed in lockstep (tests/support/lockstep.py),
    is at the client before the next leaves the upstream: unbuffered by construction, whatever
    the CPU or the load, with a 30 s allowance per token only to detect a stall. The same check
    against the rendered config with buffering and gzip turned on catches the held tokens."""
    body = {"model": dp.model, "prompt": PROMPT, "max_tokens": 40, "ignore_eos": True}
    recording = record(dp.replicas[0].url, "/v1/completions", body, dp.auth())
    assert recording.tokens >= 30, f"vLLM streamed {recording.tokens} of 40 tokens as text: nothing to prove"
    with LockstepUpstream(recording) as upstream:
        def through(edit: dict[str, str], hold_s: float) -> Exchange:
            def conf(port: int, runtime: Path) -> str:
                text = dp.render_nginx(listen_port=port, status_port=free_port(), runtime_dir=runtime,
                                       servers=[f"127.0.0.1:{upstream.port}"])
                for old, new in edit.items():
                    assert text.count(old) == 1, f"the rendered nginx.conf no longer has {old!r}"
                    text = text.replace(old, new)
                return text
            with dp.extra_nginx("lockstep-nginx", conf) as url:
                return upstream.exchange(url, "/v1/completions", body, dp.auth(), hold_s=hold_s)

        ours = through({}, hold_s=30)
        holding = through(HOLDING_NGINX, hold_s=2)
    report(f"{recording.tokens} recorded tokens in lockstep through Nginx", ours_held=ours.held, holding_config_held=holding.held)
    assert ours.status == 200 and ours.tokens == recording.tokens and not ours.held, ours
    assert ours.text == recording.text, "Nginx changed the stream"
    assert holding.held == [1] and holding.tokens == recording.tokens, f"the check cannot see held tokens: {holding}"


# --- 3. long generations ----------------------------------------------------------------------


def test_a_generation_longer_than_60s_completes_through_the_balancer_and_the_seed_config_cuts_it(dp):
    """The seed's nginx.conf has no proxy_read_timeout: Nginx's default 60 s cuts any response
    the replica is silent on for longer, i.e. every non-streamed generation over 60 s (504).

    One real non-streamed generation through our Nginx, sized from the replicas' measured rate
    to take ~80 s (many 256-token sequences, so the rate hardly drifts with context length);
    at the same time the same request through the seed's config, pointed (as the seed has it)
    at a single replica: the other one, so the two do not share a core. Machine noise can make
    a run faster than measured: then it is repeated once, sized from what it took."""
    dp.start_nginx("least_conn")
    tokens = 256
    sample = {"model": dp.model, "prompt": "hello", "temperature": 1.0, "ignore_eos": True}
    with ThreadPoolExecutor(len(dp.replicas)) as pool:  # both replicas at full batch, as during the test
        rates = list(pool.map(lambda r: measured_rate(dp, r.url, {**sample, "n": 256, "max_tokens": 32}), dp.replicas))
    n = math.ceil(80 * max(rates) / tokens)  # the full batch runs a little faster than measured
    for attempt in (1, 2):
        body = {**sample, "n": n, "max_tokens": tokens}
        ours, seed = {}, {}

        def through(base, into):
            start = time.monotonic()
            into["status"], into["body"] = complete(dp, base, timeout=600, **body)
            into["seconds"] = time.monotonic() - start

        t_ours = threading.Thread(target=through, args=(dp.lb_url, ours), daemon=True)
        t_ours.start()
        other = dp.replicas[1 - busy_replica(dp, timeout=30)].address
        with dp.extra_nginx("seed-nginx", lambda port, d: seed_nginx_conf([other], listen_port=port, runtime_dir=d)) as url:
            through(url, seed)
        t_ours.join(600)
        report(f"generation over 60 s, attempt {attempt}", rates_tok_s=[round(r) for r in rates], n=n,
               max_tokens=tokens, ours_status=ours.get("status"), ours_s=round(ours.get("seconds", 0), 1),
               seed_status=seed["status"], seed_s=round(seed["seconds"], 1))
        assert ours["status"] == 200, ours["body"]
        assert ours["body"]["usage"]["completion_tokens"] == n * tokens
        if ours["seconds"] > 62 and seed["status"] != 200:
            break
        n = math.ceil(n * 75 / min(ours["seconds"], seed["seconds"]))
        dp.wait_idle()
    else:
        pytest.fail("both attempts were too fast to prove anything")
    assert seed["status"] == 504 and 59 < seed["seconds"] < 75, seed


def measured_rate(dp: DataPlane, base: str, body: dict) -> float:
    t0 = time.monotonic()
    status, out = complete(dp, base, timeout=300, **body)
    assert status == 200, out
    return out["usage"]["completion_tokens"] / (time.monotonic() - t0)


# --- 5. sampling through the balancer ---------------------------------------------------------


def test_server_side_default_sampling_is_greedy_on_every_replica(dp):
    dp.start_nginx("round_robin")
    where, outs = [], []
    for _ in range(6):
        replica, (status, out) = dp.served_by(lambda: complete(dp, max_tokens=12))
        assert status == 200, out
        where.append(replica)
        outs.append(texts(out)[0])
    assert set(where) == {0, 1}, where
    assert len(set(outs)) == 1 and outs[0], outs  # temperature 0 from --override-generation-config
    # greedy (temperature 0) allows one sequence only: vLLM says so when the default is in force
    status, err = complete(dp, max_tokens=4, n=2)
    assert status == 400 and "greedy" in err, err
    for r in dp.replicas:
        assert "'temperature': 0.0, 'top_p': 0.9" in r.log.read_text(), f"{r.name} did not log the stack's defaults"


def test_request_sampling_parameters_override_the_defaults(dp):
    dp.start_nginx("round_robin")
    greedy = texts(complete(dp, max_tokens=12)[1])[0]
    hot = {"temperature": 1.5, "max_tokens": 12, "ignore_eos": True}
    sampled = [texts(complete(dp, **hot)[1])[0] for _ in range(4)]
    assert len(set(sampled)) >= 3 and greedy not in sampled, sampled
    same_seed = {texts(complete(dp, seed=7, **hot)[1])[0] for _ in range(2)}
    assert len(same_seed) == 1, same_seed  # seeded sampling is reproducible across replicas
    assert texts(complete(dp, top_k=1, **hot)[1]) == [greedy]  # top_k=1 keeps only the argmax
    assert texts(complete(dp, top_p=0.001, **hot)[1]) == [greedy]  # so does a tiny nucleus
    status, out = complete(dp, n=3, **hot)
    assert status == 200 and len(texts(out)) == 3 and len(set(texts(out))) >= 2, out
    assert out["usage"]["completion_tokens"] == 36


def test_beam_search_through_the_balancer(dp):
    body = {"use_beam_search": True, "n": 3, "max_tokens": 10, "ignore_eos": True}
    status, out = complete(dp, **body)
    assert status == 200, out
    beams = texts(out)
    assert len(beams) == 3 and len(set(beams)) == 3, beams
    assert texts(complete(dp, **body)[1]) == beams  # deterministic, whichever replica answers
    assert out["usage"]["completion_tokens"] == 30
    status, err = call(dp.lb_url, "/v1/completions", {"model": dp.model, "prompt": PROMPT, **body, "stream": True},
                       headers=dp.auth())
    assert status == 400 and "beam search" in err.lower(), err  # vLLM 0.32 does not stream beams
    chat = {"model": dp.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "use_beam_search": True, "n": 2}
    status, text = call(dp.lb_url, "/v1/chat/completions", chat, headers=dp.auth())
    assert status == 200 and len(json.loads(text)["choices"]) == 2, text


# --- 6. what the public port exposes ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/v1/completions", "/v1/chat/completions", "/models/qwen/v1/models"])
def test_the_api_needs_the_key_through_the_balancer(dp, path):
    body = {"/v1/completions": {"model": dp.model, "prompt": "hi", "max_tokens": 2},
            "/v1/chat/completions": {"model": dp.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            }.get(path)
    assert call(dp.lb_url, path, body)[0] == 401
    assert call(dp.lb_url, path, body, headers=dp.auth("wrong-key"))[0] == 401
    assert call(dp.lb_url, path, body, headers=dp.auth())[0] == 200


@pytest.mark.parametrize("method, path", [
    ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/load"),
    ("GET", "/ping"), ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/invocations"),
    ("POST", "/scale_elastic_ep"),
])
def test_non_api_endpoints_of_vllm_are_not_reachable_through_the_balancer(dp, method, path):
    body = {} if method == "POST" else None
    direct = call(dp.replicas[0].url, path, body, method=method)[0]
    assert direct != 404, f"{path} does not exist on vLLM itself ({direct}): nothing to prove"
    assert call(dp.lb_url, path, body, method=method, headers=dp.auth())[0] == 404


def test_vllm_guards_only_v1_with_its_key_so_the_balancer_must_hide_the_rest(dp):
    """vLLM 0.32 checks VLLM_API_KEY on /v1/* only: on a replica's own port, SageMaker's
    /invocations serves a completion to anyone. Through the balancer it does not exist."""
    body = {"model": dp.model, "prompt": "hi", "max_tokens": 2}
    assert call(dp.replicas[0].url, "/v1/completions", body)[0] == 401
    status, text = call(dp.replicas[0].url, "/invocations", body)
    assert status == 200 and json.loads(text)["choices"], text  # no key, yet a completion
    assert call(dp.lb_url, "/invocations", body)[0] == 404


def test_prometheus_is_not_reachable_through_the_balancer(dp):
    for path in ("/api/v1/query?query=up", "/graph", "/-/ready"):
        assert call(dp.prometheus_url, path)[0] == 200
        assert call(dp.lb_url, path)[0] == 404


def test_health_and_version_are_public(dp):
    assert call(dp.lb_url, "/health")[0] == 200
    assert call(dp.lb_url, "/version")[0] == 200


# --- 7. monitoring ----------------------------------------------------------------------------


def test_prometheus_scrapes_every_replica_with_the_planned_labels(dp):
    deadline = time.monotonic() + 30
    while True:
        targets = [t for t in dp.prom("/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "vllm"]
        if len(targets) == len(dp.replicas) and all(t["health"] == "up" for t in targets) or time.monotonic() > deadline:
            break
        time.sleep(1)
    got = {t["labels"]["instance"]: (t["health"], t["labels"]["replica"], t["labels"]["model"]) for t in targets}
    assert got == {r.address: ("up", r.name, "qwen") for r in dp.replicas}
    series = {s["metric"]["replica"] for s in dp.query('vllm:num_requests_running{job="vllm"}')}
    assert series == {r.name for r in dp.replicas}
    rules = {r["name"] for g in dp.prom("/api/v1/rules")["groups"] for r in g["rules"]}
    assert {"VllmReplicaDown", "VllmModelUnavailable", "VllmReplicaStalled"} <= rules


# Panels that cannot have data on this machine, and why.
NO_DATA_HERE = {
    'job="dcgm"': "DCGM GPU metrics need an NVIDIA GPU and the DCGM exporter",
}


def test_every_dashboard_panel_query_returns_data(dp):
    no_data = dict(NO_DATA_HERE)
    if dp.exporter is None:
        no_data['job="nginx"'] = "no Nginx exporter binary installed (apt: prometheus-nginx-exporter)"
    if dp.cfg.load_balancer.policy != "prefix_affinity":
        no_data["fleet:affinity_"] = ("recorded only under prefix_affinity: tests/live/test_prefix_affinity_live.py "
                                          "checks those panels")
    # traffic inside the panels' rate window ($__rate_interval = 1m), streamed so the inter-token
    # histogram fills, with a shared prefix so the prefix cache has hits
    body = {"model": dp.model, "prompt": PROMPT, "max_tokens": 24}
    with ThreadPoolExecutor(4) as pool:
        assert all(r.ok for r in pool.map(lambda _: stream_completion(dp.lb_url, body, headers=dp.auth()), range(16)))
    time.sleep(3 * dp.cfg.monitoring.scrape_interval_s + 1)
    empty, checked = [], 0
    for expr in dashboard_queries():
        if any(marker in expr for marker in no_data):
            continue
        checked += 1
        result = dp.query(expr)
        if not result:
            empty.append(expr)
    report("dashboard queries", with_data=checked - len(empty), excluded=len(dashboard_queries()) - checked,
           excluded_because=list(no_data.values()))
    assert not empty, "panels without data:\n" + "\n".join(empty)


# --- 4. and 7. a replica dies under load (destructive: last) ----------------------------------


class SteadyLoad:
    """Clients sending short streamed completions through the LB back to back."""

    def __init__(self, dp: DataPlane, workers: int = 4):
        self.dp, self.workers = dp, workers
        self.stop = threading.Event()
        self.results: list[StreamResult] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self):
        body = {"model": self.dp.model, "prompt": PROMPT, "max_tokens": 48, "ignore_eos": True}
        while not self.stop.is_set():
            r = stream_completion(self.dp.lb_url, body, headers=self.dp.auth(), timeout=60)
            with self.lock:
                self.results.append(r)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


KILLED = 1
KILL_TIME: dict[str, float] = {}


def test_killing_a_replica_under_load_fails_no_new_request(dp):
    """SIGKILL one replica's process group while 4 clients stream through the LB.

    Three kinds of requests: those running on the replica when it died (their streams are cut:
    counted and reported); those that reached it while it was dying (the kernel keeps its
    listening socket accepting until the last process of the group is gone, seconds for a big
    process; Nginx retries them elsewhere once the socket resets, within its 10 s retry budget);
    and every request after that (refused at connect: Nginx retries at once). None of the last
    kind may fail."""
    dp.start_nginx("least_conn")
    with SteadyLoad(dp) as load:
        time.sleep(4)
        deadline = time.monotonic() + 5  # kill it while it is serving
        while (in_flight := dp.metric(KILLED, "vllm:num_requests_running")) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        t_kill, t_refused = dp.kill_replica(KILLED)
        KILL_TIME["t"] = t_kill
        time.sleep(8)
    failed = [r for r in load.results if not r.ok]
    cut = [r for r in failed if r.started < t_kill]
    dying = [r for r in load.results if t_kill <= r.started < t_refused]
    new = [r for r in load.results if r.started >= t_refused]
    report("replica killed under load (4 clients, 48-token streams)",
           requests_before_kill=sum(r.started < t_kill for r in load.results),
           running_on_killed_replica=int(in_flight), cut_by_the_kill=len(cut),
           cut_errors=sorted({r.error[:40] if r.status == 200 else f"HTTP {r.status}" for r in cut}),
           socket_accepted_after_kill_ms=round((t_refused - t_kill) * 1000),
           started_while_dying=len(dying), failed_while_dying=sum(not r.ok for r in dying),
           requests_after_socket_closed=len(new), failed_after_socket_closed=sum(not r.ok for r in new))
    dp.restart_replica(KILLED)  # comes back while the alert test runs
    assert len(new) >= 20
    assert not [r for r in new if not r.ok], [(round(r.started - t_kill, 3), r.status, r.error[:80]) for r in new if not r.ok]
    assert all(r.ended >= t_kill for r in cut), "a request failed before the kill"
    # only requests that the dying replica held can fail: at most one per client at a time
    assert len(cut) <= load.workers and sum(not r.ok for r in dying) <= load.workers


def test_replica_down_alert_fires(dp):
    killed = dp.replicas[KILLED]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alerts = [a for a in dp.prom("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == "VllmReplicaDown"]
        if any(a["state"] == "firing" and a["labels"]["replica"] == killed.name for a in alerts):
            break
        time.sleep(1)
    else:
        pytest.fail(f"VllmReplicaDown did not fire for {killed.name}: {alerts}")
    firing = [a for a in alerts if a["state"] == "firing"]
    report("VllmReplicaDown", fired_for=[a["labels"]["replica"] for a in firing],
           firing_within_s_of_the_kill=round(time.monotonic() - KILL_TIME["t"], 1),
           alert_for=dp.cfg.monitoring.replica_down_for, scrape_interval_s=dp.cfg.monitoring.scrape_interval_s)
    assert [a["labels"]["replica"] for a in firing] == [killed.name]
    assert killed.address in firing[0]["annotations"]["description"]


def test_a_restarted_replica_gets_traffic_again(dp):
    killed = dp.replicas[KILLED]
    seconds = killed.wait_ready()
    # Nginx benched the replica for fail_timeout after its failures; then it tries it again
    time.sleep(dp.cfg.load_balancer.fail_timeout_s)
    where = served_by_lb(dp, 8)
    report("restarted replica", ready_after_s=round(seconds, 1), served=where.count(KILLED), of=8)
    assert where.count(KILLED) >= 2, where
