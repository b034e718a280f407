"""Prefix affinity on real vLLM: two CPU replicas of the tiny dummy-weight model behind the
rendered Nginx, each policy in turn, the official `openai` client sending multi-turn chats with no
session header.

1. Hit rates: the same conversations (each with its own ~600-token document, three turns, the
   prompt of each turn repeating the whole conversation) through every policy, the replicas' prefix
   caches emptied between policies (`/reset_prefix_cache`, vLLM's dev-mode endpoint); the hit rate
   is what vLLM counted (`vllm:prefix_cache_hits_total` / `queries_total`, both replicas). Prefix
   affinity without a header must match session affinity with one, and beat least connections and
   round robin, which send a conversation's next turn to either replica.
2. The bound: with `max_num_seqs: 1` (so the default bound is 1: past it vLLM queues), a second
   request of a conversation whose replica is busy runs on the other replica at once, while header
   session affinity queues it behind the first (`vllm:num_requests_waiting`).

3. What operators see: the dashboard's prefix-affinity panels (hit rate per replica, load against
   the bound, spill-over) return data from the real Prometheus with the rendered recording rules.

One module-scoped data plane with Prometheus: ~2 min to start on 2 cores.
"""
from __future__ import annotations

import random
import threading
import time
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


def running_and_waiting(dp: DataPlane) -> list[tuple[float, float]]:
    return [(dp.metric(i, "vllm:num_requests_running"), dp.metric(i, "vllm:num_requests_waiting")) for i in range(2)]


def busy_pair(dp: DataPlane, policy: str) -> list[tuple[float, float]]:
    """Two long generations of one conversation (the second sent once the first runs); the
    replicas' running and waiting counts while both are in flight."""
    dp.start_nginx(policy)
    dp.wait_idle()
    messages = [{"role": "user", "content": document(99)[:300] + "\nSummarise the document."}]
    headers = {"X-Session-ID": "hot"} if policy == "session_affinity" else {}
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            with client(dp) as c:
                c.chat.completions.create(model=dp.model, messages=messages, max_tokens=3000, extra_headers=headers,
                                          extra_body={"ignore_eos": True})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=generate, daemon=True) for _ in range(2)]
    threads[0].start()
    wait_until(lambda: sum(r for r, _ in running_and_waiting(dp)) == 1, timeout=60)
    threads[1].start()
    # Both counted, and none of them waiting on an idle replica: vLLM counts a request as waiting
    # for the moment before its scheduler's next step, which is not the queueing asked about.
    seen = poll(lambda: running_and_waiting(dp),
                lambda state: sum(r + w for r, w in state) == 2 and not any(r == 0 and w > 0 for r, w in state))
    for t in threads:
        t.join(300)
    assert not errors, errors
    return seen


def test_a_busy_replica_passes_the_conversations_next_request_on_instead_of_queueing_it(dp):
    assert "max_conns=1" in dp.render_nginx("prefix_affinity")  # the bound: the model's max_num_seqs
    spilled = busy_pair(dp, "prefix_affinity")
    assert sorted(spilled) == [(1, 0), (1, 0)], spilled  # one running on each replica, nothing waiting
    queued = busy_pair(dp, "session_affinity")
    assert sorted(queued) == [(0, 0), (1, 1)], queued  # unbounded affinity: the second waits behind the first


def poll(read, until, timeout: float = 60):
    """`read()` until `until(value)` holds; that value (one reading, not a later one)."""
    deadline = time.monotonic() + timeout
    while not until(value := read()):
        assert time.monotonic() < deadline, f"timed out; last {value}"
        time.sleep(0.05)
    return value


def test_the_dashboards_affinity_panels_have_data_from_the_recording_rules(dp):
    affinity = [e for e in dashboard_queries() if "fleet:" in e or "prefix_cache" in e]
    assert len(affinity) >= 4 and any("fleet:affinity_load" in e for e in affinity), affinity
    dp.start_nginx("prefix_affinity")
    messages = [{"role": "user", "content": "Write a long story."}]
    threads = [threading.Thread(target=lambda: client(dp).chat.completions.create(
        model=dp.model, messages=messages, max_tokens=3000, extra_body={"ignore_eos": True}), daemon=True)
        for _ in range(2)]
    for t in threads:
        t.start()
    # Both replicas at their bound (1) until Prometheus has recorded it: what the spill-over panel shows.
    wait_until(lambda: len(dp.query("fleet:affinity_load:ratio >= 1")) == 2, timeout=120)
    for t in threads:
        t.join(300)
    time.sleep(3 * dp.cfg.monitoring.scrape_interval_s + 1)
    empty = [e for e in affinity if not dp.query(e)]
    assert not empty, "panels without data:\n" + "\n".join(empty)
    spill = dp.query("max_over_time(fleet:affinity_load:ratio[5m])")
    assert sorted(r["metric"]["replica"] for r in spill) == sorted(r.name for r in dp.replicas), spill
