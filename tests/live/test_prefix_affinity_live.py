"""Prefix affinity on real vLLM: two CPU replicas of the tiny dummy-weight model behind the
rendered Nginx, each policy in turn, the official `openai` client sending multi-turn chats with no
session header.

1. Hit rates: the same conversations (each with its own ~600-token document, three turns, the
   prompt of each turn repeating the whole conversation) through every policy, the replicas' prefix
   caches emptied between policies (`/reset_prefix_cache`, vLLM's dev-mode endpoint); the hit rate
   is what vLLM counted (`vllm:prefix_cache_hits_total` / `queries_total`, both replicas). Prefix
   affinity without a header must match session affinity with one, and beat least connections and
   round robin, which send a conversation's next turn to either replica.
2. The bound: with `max_num_seqs: 1` (so the default bound is 1: past it vLLM queues), of two
   requests of one conversation the second runs on the other replica at once, while header session
   affinity queues it behind the first (vLLM's queue-time and decode-time counters). Both go out as
   plain HTTP at once, and nothing is watched while they run: see `at_once`.
3. What operators see: the dashboard's prefix-affinity panels (hit rate per replica, load against
   the bound, spill-over) return data from the real Prometheus with the rendered recording rules.

One module-scoped data plane with Prometheus: ~2 min to start on 2 cores.
"""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
import urllib.request

import openai
import pytest

from support.dataplane import DataPlane, data_plane
from support.grafana_queries import dashboard_queries
from support.processes import wait_until
from support.dataplane import test_config as live_config  # not collected as a test

pytestmark = pytest.mark.live

WORDS = ("river", "ledger", "copper", "harbor", "signal", "meadow", "lantern", "orbit", "cedar", "quartz",
         "falcon", "amber", "glacier", "tunnel", "violet", "marble")
CONVERSATIONS, TURNS = 6, 3


def document(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(600))


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    cfg = live_config(replicas=2, policy="prefix_affinity")
    model = cfg.models[0].model_copy(update={"max_num_seqs": 1, "enable_prefix_caching": True})
    cfg = cfg.model_copy(update={"models": [model]})
    with data_plane(tmp_path_factory.mktemp("affinity-live"), cfg=cfg, monitoring=True,
                    replica_env={"VLLM_SERVER_DEV_MODE": "1"}) as plane:
        yield plane


def client(dp: DataPlane) -> openai.OpenAI:
    return openai.OpenAI(base_url=dp.lb_url + "/v1", api_key=dp.api_key, max_retries=0, timeout=120)


def reset_caches(dp: DataPlane) -> None:
    for r in dp.replicas:
        req = urllib.request.Request(r.url + "/reset_prefix_cache", method="POST", headers=dp.auth())
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200


def cache_counters(dp: DataPlane) -> tuple[float, float]:
    return (sum(dp.metric(i, "vllm:prefix_cache_hits_total") for i in range(2)),
            sum(dp.metric(i, "vllm:prefix_cache_queries_total") for i in range(2)))


def hit_rate(dp: DataPlane, policy: str) -> float:
    """Every conversation's turns, one request at a time, in one shuffled order (the same for every
    policy), each turn's prompt repeating the conversation so far; the share of prompt tokens vLLM
    found in its prefix cache."""
    dp.start_nginx(policy)
    dp.wait_idle()
    reset_caches(dp)
    hits0, queries0 = cache_counters(dp)
    chats = {c: [{"role": "system", "content": "Answer from the document."},
                 {"role": "user", "content": document(c) + f"\nQuestion 1 about document {c}?"}]
             for c in range(CONVERSATIONS)}
    order = [c for c in range(CONVERSATIONS) for _ in range(TURNS)]
    random.Random(7).shuffle(order)
    with client(dp) as c:
        for conv in order:
            header = {"X-Session-ID": f"conversation-{conv}"} if policy == "session_affinity" else {}
            reply = c.chat.completions.create(model=dp.model, messages=chats[conv], max_tokens=8,
                                              extra_headers=header, extra_body={"ignore_eos": True})
            chats[conv] += [{"role": "assistant", "content": reply.choices[0].message.content},
                            {"role": "user", "content": f"And question {len(chats[conv]) // 2 + 1}?"}]
    hits, queries = cache_counters(dp)
    return (hits - hits0) / (queries - queries0)


def test_prefix_affinity_without_a_header_matches_session_affinity_with_one(dp):
    rates = {p: hit_rate(dp, p) for p in ("least_conn", "round_robin", "session_affinity", "prefix_affinity")}
    print(f"prefix-cache hit rates: {rates}")
    assert rates["prefix_affinity"] >= 0.95 * rates["session_affinity"], rates
    # Every turn after a conversation's first finds its whole earlier prompt cached: ~2/3 of its
    # tokens here. The others find it only when the turn happens to reach the same replica.
    assert rates["prefix_affinity"] > 0.5, rates
    assert rates["prefix_affinity"] > max(rates["least_conn"], rates["round_robin"]) + 0.1, rates


def at_once(dp: DataPlane, n: int, messages: list[dict], headers: dict[str, str]) -> None:
    """`n` long generations of one conversation, all on the wire before any is answered.

    Not through the openai client, and not one thread each: while a replica generates, vLLM's engine
    busy-waits and every other process here may get no CPU for seconds (2 shared cores), so a
    request sent "once the first runs" can arrive after the first has finished."""
    body = json.dumps({"model": dp.model, "messages": messages, "max_tokens": 3000, "ignore_eos": True}).encode()
    url = urllib.parse.urlsplit(dp.lb_url)
    conns = [http.client.HTTPConnection(url.hostname, url.port, timeout=300) for _ in range(n)]
    try:
        for c in conns:
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json", **dp.auth(), **headers})
        for c in conns:
            resp = c.getresponse()
            assert resp.status == 200, resp.read()[:500]
            resp.read()
    finally:
        for c in conns:
            c.close()


def busy_pair(dp: DataPlane, policy: str) -> tuple[list[float], float, float]:
    """Two long generations of one conversation at once: what each replica finished, and the
    seconds the two spent waiting in vLLM's queue and generating, all from vLLM's own counters read
    afterwards (a replica busy generating answers /metrics too late to watch it while it runs)."""
    dp.start_nginx(policy)
    dp.wait_idle()

    def counters() -> tuple[list[float], float, float]:
        return (dp.finished(), sum(dp.metric(i, "vllm:request_queue_time_seconds_sum") for i in range(2)),
                sum(dp.metric(i, "vllm:request_decode_time_seconds_sum") for i in range(2)))

    finished0, queued0, decoding0 = counters()
    messages = [{"role": "user", "content": document(99)[:300] + "\nSummarise the document."}]
    at_once(dp, 2, messages, {"X-Session-ID": "hot"} if policy == "session_affinity" else {})
    wait_until(lambda: sum(dp.finished()) - sum(finished0) == 2, timeout=30)
    finished, queued, decoding = counters()
    return [after - before for after, before in zip(finished, finished0)], queued - queued0, decoding - decoding0


def test_a_busy_replica_passes_the_conversations_next_request_on_instead_of_queueing_it(dp):
    assert "max_conns=1" in dp.render_nginx("prefix_affinity")  # the bound: the model's max_num_seqs
    ran, queued, decoding = busy_pair(dp, "prefix_affinity")
    # One on each replica, neither waiting behind the other's generation (each takes decoding / 2).
    assert ran == [1, 1] and queued < 0.1 * decoding / 2, (ran, queued, decoding)
    ran, queued, decoding = busy_pair(dp, "session_affinity")
    # Unbounded affinity: both on one replica, the second waiting there for the first's generation.
    assert sorted(ran) == [0, 2] and queued > 0.5 * decoding / 2, (ran, queued, decoding)


def test_the_dashboards_affinity_panels_have_data_from_the_recording_rules(dp):
    affinity = [e for e in dashboard_queries() if "fleet:" in e or "prefix_cache" in e]
    assert len(affinity) >= 4 and any("fleet:affinity_load" in e for e in affinity), affinity
    dp.start_nginx("prefix_affinity")
    messages = [{"role": "user", "content": "Write a long story."}]
    done = threading.Event()

    def keep_busy() -> None:  # pairs of long generations until Prometheus has seen both replicas busy
        while not done.is_set():
            at_once(dp, 2, messages, {})

    started = time.monotonic()

    def both_reached_the_bound() -> bool:  # in what Prometheus recorded since this test started
        window = int(time.monotonic() - started) + 1
        try:
            at = dp.query(f"max_over_time(fleet:affinity_load:ratio[{window}s]) >= 1")
        except OSError:  # Prometheus, starved by a generating replica, answers late: ask again
            return False
        return sorted(r["metric"]["replica"] for r in at) == sorted(r.name for r in dp.replicas)

    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    try:
        # Each replica at its bound (1) at some scrape: what the load and spill-over panels show. Not
        # both at one scrape: a replica busy generating often answers a scrape too late (see `at_once`).
        wait_until(both_reached_the_bound, timeout=240, interval=1)
    finally:
        done.set()
        busy.join(300)
    time.sleep(3 * dp.cfg.monitoring.scrape_interval_s + 1)
    empty = [e for e in affinity if not dp.query(e)]
    assert not empty, "panels without data:\n" + "\n".join(empty)
