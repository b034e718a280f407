"""API keys at the edge (`load_balancer.keys` + the `client_keys` secret): what the config refuses,
and that no key value reaches a message, a rendered file or a log."""
from __future__ import annotations

import json

import pytest

from fleet.config.errors import ConfigError
from support.refusals import assert_refused_before_any_resource
from support.stacks import raw_stack, run_raw
from tools.mock_run import MockRun

KEYS = {"team-a": "sk-team-a-" + "Q7vX2mR9kL4pZ8nB3wY6tH1cF5gJ0dS", "team-b": "sk-team-b-" + "W3eR8tY1uI6oP4aS9dF2gH7jK5lZ0xC"}


def with_keys(raw: dict, *keys: dict) -> dict:
    raw.setdefault("load_balancer", {})["keys"] = list(keys) or [
        {"name": "team-a", "models": ["qwen"], "requests_per_minute": 60, "max_concurrent": 2},
        {"name": "team-b"}]
    return raw


def refused(raw: dict, secrets: dict) -> ConfigError:
    run = MockRun("local")
    with pytest.raises(ConfigError) as caught:
        run_raw("local", raw, secrets=secrets, run=run)
    message = str(caught.value)
    for value in KEYS.values():
        assert value not in message and value[:20] not in message, message
    assert [r for r in run.resources if r.typ != "pulumi:pulumi:Stack"] == []
    return caught.value


@pytest.mark.parametrize("case, keys, secret, key, fragment", [
    ("a key declared twice", [{"name": "team-a"}, {"name": "team-a"}], KEYS, "load_balancer.keys[1].name", "share this name"),
    ("a key for a model nobody serves", [{"name": "team-a", "models": ["gpt-5"]}, {"name": "team-b"}], KEYS,
     "load_balancer.keys[0].models[0]", "no model is served"),
    ("keys declared, no secret", None, None, "client_keys", "not set"),
    ("a secret key with no entry", [{"name": "team-a"}], KEYS, "client_keys.team-b", "no entry"),
    ("an entry with no secret key", None, {"team-a": KEYS["team-a"]}, "load_balancer.keys[1].name", "has no key of this name"),
    ("a short key", None, {**KEYS, "team-b": "sk-short"}, "client_keys.team-b", "at least 32"),
    ("a key with a space", None, {**KEYS, "team-b": KEYS["team-b"][:20] + " " + KEYS["team-b"][20:]}, "client_keys.team-b",
     "without spaces"),
    ("one key under two names", None, {**KEYS, "team-b": KEYS["team-a"]}, "client_keys", "share one key"),
    ("a name that is no DNS label", None, {**KEYS, "Team B": KEYS["team-b"]}, "client_keys.Team B", "DNS label"),
    ("not a map", None, [KEYS["team-a"]], "client_keys", "not a map"),
])
def test_a_broken_key_setup_is_refused_without_showing_any_key(case, keys, secret, key, fragment):
    raw = with_keys(raw_stack("local"), *(keys or []))
    secrets = {"client_keys": json.dumps(secret)} if secret is not None else {}
    err = refused(raw, secrets)
    assert err.key == key and fragment in str(err), str(err)


def test_keys_with_an_unknown_limit_key_are_refused_like_any_field():
    raw = with_keys(raw_stack("local"), {"name": "team-a", "rpm": 60})
    assert_refused_before_any_resource("rpm", "local", raw, "load_balancer.keys[0].rpm", "requests_per_minute")
