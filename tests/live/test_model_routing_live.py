"""One base URL, two models: the official `openai` client against the rendered Nginx (with njs)
in front of two real vLLM CPU replicas serving the tiny dummy-weight model under two names.

One module-scoped data plane (tests/support/dataplane.py, no monitoring): ~2 min to start on 2
cores. Each request's replica is read from the replicas' own request counters, so "answered by
its replica" is what vLLM counted, not what the response claims.
"""
from __future__ import annotations

import asyncio
import copy
import os

import openai
import pytest

from fleet.config.load import parse_config
from fleet.config.schema import FleetConfig
from support.dataplane import DataPlane, data_plane
from support.stacks import raw_stack

pytestmark = pytest.mark.live

NAMES = ("tiny-a", "tiny-b")


def two_model_config() -> FleetConfig:
    """The `local` stack's model twice, one replica each under its own served name, on this
    machine's cores, with `--load-format dummy` (the tiny model has no weights) and an API key."""
    raw = raw_stack("local")
    raw["hosts"][0]["cpus"] = len(os.sched_getaffinity(0))
    first = raw["models"][0]
    first.update(replicas=1, served_model_name=NAMES[0], extra_args=["--load-format", "dummy"],
                 sampling={"temperature": 0.0})
    second = copy.deepcopy(first)
    second.update(name="qwen-b", served_model_name=NAMES[1])
    raw["models"].append(second)
    raw["api_key"] = True
    return parse_config(raw, "local")


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    with data_plane(tmp_path_factory.mktemp("routing-live"), cfg=two_model_config(), monitoring=False) as plane:
        yield plane


def replica_name(dp: DataPlane, i: int) -> str:
    return dp.replicas[i].plan.model.client_model_name


def test_each_model_is_answered_by_its_own_replica_at_v1_sync(dp):
    client = openai.OpenAI(base_url=dp.lb_url + "/v1", api_key=dp.api_key, max_retries=0)
    for name in NAMES:
        i, done = dp.served_by(lambda: client.completions.create(model=name, prompt="hello", max_tokens=4))
        assert (replica_name(dp, i), done.model) == (name, name)
        i, text = dp.served_by(lambda: "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)))
        assert replica_name(dp, i) == name and text


def test_each_model_answers_at_v1_async_streamed_and_not(dp):
    async def both() -> list:
        client = openai.AsyncOpenAI(base_url=dp.lb_url + "/v1", api_key=dp.api_key, max_retries=0)

        async def streamed(name: str) -> set[str]:
            stream = await client.completions.create(model=name, prompt="hello", max_tokens=4, stream=True)
            return {chunk.model async for chunk in stream}

        async def whole(name: str) -> str:
            chat = await client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                        max_tokens=4)
            return chat.model

        return await asyncio.gather(*(streamed(n) for n in NAMES), *(whole(n) for n in NAMES))

    before = dp.finished()
    # A loop of its own: asyncio.run() would leave the thread without a current loop, which the
    # Pulumi mocks of every later test in this process need.
    loop = asyncio.new_event_loop()
    try:
        results = loop.run_until_complete(both())
    finally:
        loop.close()
    assert results == [{NAMES[0]}, {NAMES[1]}, NAMES[0], NAMES[1]]
    dp.wait_idle()
    assert [a - b for a, b in zip(dp.finished(), before)] == [2, 2]  # two requests on each replica


def test_the_model_list_names_both_and_an_unknown_model_gets_openais_404(dp):
    client = openai.OpenAI(base_url=dp.lb_url + "/v1", api_key=dp.api_key, max_retries=0)
    assert [m.id for m in client.models.list()] == list(NAMES)
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4o", prompt="hello", max_tokens=4)
    assert err.value.code == "model_not_found" and all(n in err.value.message for n in NAMES)
