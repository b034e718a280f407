"""Prefix affinity, the default balancing policy: the rendered Nginx and fleet.js (real njs) in
front of fake replicas on loopback. A conversation stays on one replica for all its turns with no
header from the client, different conversations spread even when they share a system prompt, a
session header wins, the replica set can change without moving most conversations, and a replica
at its bound passes a hot conversation's next request to another replica instead of queueing it."""
from __future__ import annotations

import collections
import re
import threading
from collections.abc import Iterator

import pytest

from fleet.config.load import parse_config
from fleet.config.schema import FleetConfig
from support.edge import echo_upstream, gateways
from support.processes import free_port, logged_after, wait_until
from support.stacks import raw_stack

SYSTEM = "You are the support assistant of a large bank. " * 40  # ~2,000 characters every conversation shares


def config(**lb) -> FleetConfig:
    raw = raw_stack("local")
    raw.setdefault("load_balancer", {}).update(lb)
    return parse_config(raw, "local")


def chat(conversation: int, turns: int, system: str = SYSTEM) -> dict:
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": f"Conversation {conversation}: my card was declined at shop {conversation * 7}."}]
    for t in range(1, turns):
        messages += [{"role": "assistant", "content": f"Answer {t} to conversation {conversation}."},
                     {"role": "user", "content": f"Follow-up question {t}?"}]
    return {"model": "Qwen/Qwen2.5-0.5B-Instruct", "messages": messages, "max_tokens": 8}


@pytest.fixture(scope="module")
def make(tmp_path_factory) -> Iterator:
    with gateways(lambda: tmp_path_factory.mktemp("nginx")) as start:
        yield start


@pytest.fixture(scope="module")
def replicas():
    return [echo_upstream(f"r{i}") for i in range(4)]


def servers(replicas) -> list[str]:
    return [f"127.0.0.1:{r.server_port}" for r in replicas]


@pytest.fixture(scope="module")
def three(make, replicas):
    return make(config(), {"qwen": servers(replicas[:3])})


def where(gw, path: str, doc: dict, headers=None) -> str:
    status, got = gw.post(path, doc, headers)
    assert status == 200, got
    return got["upstream"]


def test_every_turn_of_a_conversation_reaches_one_replica_and_conversations_spread(three):
    homes = {}
    for c in range(24):
        seen = {where(three, "/v1/chat/completions", chat(c, turns)) for turns in range(1, 7)}
        assert len(seen) == 1, (c, seen)  # six turns, each longer than the last, one replica
        homes[c] = seen.pop()
    # 24 conversations behind one shared ~2,000-character system prompt: not all on one replica
    # (a key of the shared start would do that); each replica gets some (p(a replica gets none) ~ 3 x (2/3)^24).
    assert set(homes.values()) == {"r0", "r1", "r2"}, collections.Counter(homes.values())


def test_the_session_header_wins_over_the_content(three):
    got = {where(three, "/v1/chat/completions", chat(c, 1), {"X-Session-ID": "user-42"}) for c in range(12)}
    assert len(got) == 1
    spread = {where(three, "/v1/chat/completions", chat(0, 1), {"X-Session-ID": f"user-{s}"}) for s in range(24)}
    assert len(spread) > 1


def test_text_prompts_and_the_responses_api_keep_their_replica(three):
    doc = "Quarterly report of the northern region. " * 60  # > 2,048 characters: the key is its start
    first = where(three, "/v1/completions", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": doc + "Q1?"})
    for q in range(5):
        assert where(three, "/v1/completions", {"model": "Qwen/Qwen2.5-0.5B-Instruct",
                                                 "prompt": doc + f"Q1? A. Q{q + 2}?"}) == first
    ids = list(range(600))
    first = where(three, "/v1/completions", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": ids})
    assert where(three, "/v1/completions", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": ids + [1, 2]}) == first
    talk = [{"role": "user", "content": "Plan a trip to Lisbon."}]
    first = where(three, "/v1/responses", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "instructions": "Be brief.", "input": talk})
    later = talk + [{"role": "assistant", "content": "Day 1: Alfama."}, {"role": "user", "content": "Day 2?"}]
    assert where(three, "/v1/responses", {"model": "Qwen/Qwen2.5-0.5B-Instruct", "instructions": "Be brief.",
                                          "input": later}) == first


def test_the_path_per_model_form_keeps_conversations_too(three):
    homes = {where(three, "/models/qwen/v1/chat/completions", chat(c, turns))
             for c in (3,) for turns in range(1, 5)}
    assert len(homes) == 1


def test_adding_a_replica_moves_only_the_conversations_it_takes(make, replicas):
    before = make(config(), {"qwen": servers(replicas[:3])})
    after = make(config(), {"qwen": servers(replicas[:4])})
    moved = 0
    for c in range(60):
        old, new = where(before, "/v1/chat/completions", chat(c, 1)), where(after, "/v1/chat/completions", chat(c, 1))
        if old != new:
            assert new == "r3", (c, old, new)  # a conversation moves only to the new replica
            moved += 1
    # Consistent hashing: about a quarter move (a modulo hash would move ~3/4).
    assert 0 < moved < 30, moved


def test_the_access_log_shows_a_digest_of_the_routing_key_not_the_prompt(three):
    _, line = logged_after(three.log, lambda: where(three, "/v1/chat/completions", chat(99, 2)),
                           lambda x: "POST /v1/chat/completions" in x)
    route = line.split(' route="', 1)[1].split('"', 1)[0]
    assert len(route) == 16 and int(route, 16) >= 0, line
    assert "bank" not in line and "declined" not in line


def test_a_hot_conversation_spills_to_the_next_replica_at_its_bound_and_never_gets_a_502(make):
    ups = [echo_upstream(f"b{i}") for i in range(2)]
    gw = make(config(affinity_bound=2), {"qwen": servers(ups)})
    body = chat(7, 1)
    home = where(gw, "/v1/chat/completions", body)
    results: list[tuple[int, str]] = []

    def send():
        status, got = gw.post("/v1/chat/completions?hold", body)
        results.append((status, got.get("upstream")))

    threads = [threading.Thread(target=send, daemon=True) for _ in range(5)]
    try:
        for t in threads[:2]:
            t.start()
        wait_until(lambda: sum(u.holding for u in ups) == 2)
        assert [u.holding for u in ups if u.server_port == port_of(ups, home)] == [2]  # both at home
        threads[2].start()  # home has 2 of 3 in flight, over 1.25 x the mean: its next replica takes it
        wait_until(lambda: sum(u.holding for u in ups) == 3)
        assert sorted(u.holding for u in ups) == [1, 2]
        for t in threads[3:]:  # every replica at affinity_bound (max_conns): queued on the least busy, not refused
            t.start()
        wait_until(lambda: sum(u.holding for u in ups) == 5)
    finally:
        for u in ups:
            u.release.set()
        for t in threads:
            t.join(10)
    assert [s for s, _ in results] == [200] * 5, results
    assert {u for _, u in results} == {"b0", "b1"}


def port_of(ups, label: str) -> int:
    return next(u.server_port for u in ups if u.label == label)


def admitted_one_by_one(gw, ups, body: dict, n: int) -> tuple[list[str], list[threading.Thread]]:
    """Sends `n` held requests one after the other, each once the last is running on a replica;
    which replica took each, and the threads (the caller releases the replicas)."""
    took, threads = [], []
    for i in range(n):
        before = [u.holding for u in ups]
        threads.append(threading.Thread(target=gw.post, args=("/v1/chat/completions?hold", body), daemon=True))
        threads[-1].start()
        wait_until(lambda: sum(u.holding for u in ups) == i + 1)
        took += [u.label for u, was in zip(ups, before) if u.holding > was]
    return took, threads


def release(ups, threads) -> None:
    for u in ups:
        u.release.set()
    for t in threads:
        t.join(10)
    for u in ups:
        u.release.clear()


@pytest.mark.parametrize(("factor", "split"), [(None, (8, 4)), (1.0, (6, 6)), (2.0, (12, 0))])
def test_the_bound_follows_the_load_a_hot_conversation_holds_load_factor_times_the_mean(make, factor, split):
    """Bounded-load consistent hashing with the default affinity_bound (256, never reached here):
    12 requests of one conversation over 2 replicas leave ceil(factor x 6) at home (default 1.25),
    the rest on its next replica, and every request counts until it ends: afterwards the same
    conversation fills its home up to the bound again from zero."""
    ups = [echo_upstream(f"h{i}") for i in range(2)]
    gw = make(config(**({"affinity_load_factor": factor} if factor else {})), {"qwen": servers(ups)})
    body = chat(11, 1)
    home = where(gw, "/v1/chat/completions", body)
    other = next(u.label for u in ups if u.label != home)
    took, threads = admitted_one_by_one(gw, ups, body, 12)
    try:
        assert (took.count(home), took.count(other)) == split, took
    finally:
        release(ups, threads)
    logged = lambda: [ln for ln in gw.log.read_text().splitlines() if "POST /v1/chat/completions?hold" in ln]  # noqa: E731
    wait_until(lambda: len(logged()) == 12)
    assert sorted(ln.split(" placed=")[1].split()[0] for ln in logged()) == ["0"] * split[0] + ["1"] * split[1]
    took, threads = admitted_one_by_one(gw, ups, body, 3)  # the 12 no longer count
    release(ups, threads)
    assert took == [home, home, home if factor == 2.0 else other], took


def test_make_plan_names_the_policy_and_each_models_bound_and_how_to_size_it():
    from tools.plan_report import plan_text

    default = plan_text(config())
    assert "Balancing: prefix_affinity" in default and "fewer than 1.25 x the mean in flight" in default, default
    assert re.search(r"^qwen\s+2\s+256$", default, re.M) and "each model's max_num_seqs (else 256" in default, default
    sized = plan_text(config(affinity_bound=9, affinity_load_factor=1.5))
    assert re.search(r"^qwen\s+2\s+9$", sized, re.M) and "fewer than 1.5 x" in sized and "else 256" not in sized
    assert "Balancing: least_conn" in plan_text(config(policy="least_conn"))


def test_a_dead_replicas_conversations_all_go_to_their_next_replica_not_anywhere(make):
    """Nginx alone would pass a dead replica's requests to whichever backup its round robin picks:
    each turn on another replica, its prefix lost every time. fleet.js benches the replica as
    Nginx does (fail_timeout_s: long enough here that a busy machine cannot outlast it; when it
    ends, one request finds the replica dead again and benches it anew) and ranks its
    conversations on without it."""
    ups = [echo_upstream(f"d{i}") for i in range(3)]
    dead = free_port()
    gw = make(config(fail_timeout_s=600), {"qwen": [f"127.0.0.1:{dead}", *servers(ups)]})
    for c in range(40):
        assert gw.post("/v1/chat/completions", chat(c, 1))[0] == 200
    for c in range(40):
        for turns in range(2, 6):
            assert gw.post("/v1/chat/completions", chat(c, turns))[0] == 200
    lines = lambda: [ln for ln in gw.log.read_text().splitlines() if ' route="' in ln]  # noqa: E731 (access log only)
    wait_until(lambda: len(lines()) == 40 * 5)
    served: dict[str, list[str]] = collections.defaultdict(list)  # route key -> upstream of each request
    for line in lines():
        served[line.split(' route="', 1)[1].split('"', 1)[0]].append(line.split(" upstream=", 1)[1].split()[0])
    homeless = [key for key, where_ in served.items() if where_[0].startswith(f"127.0.0.1:{dead},")]
    assert len(homeless) == 1, served  # the first one benched the replica: the others were placed past it
    moved = [key for key, where_ in served.items() if where_[0] != where_[1]]  # its first turn and the rest
    assert moved == homeless, served
    for key, where_ in served.items():
        assert len(set(where_[1:])) == 1 and str(dead) not in where_[1], (key, where_)
