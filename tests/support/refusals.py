"""Shared pieces of the broken-config catalogues: mutations of a stack's raw values, and the one
assertion every case makes (one clear ConfigError, before any resource is registered)."""
from __future__ import annotations

import pytest

from fleet.config.errors import ConfigError
from tools.mock_run import MockRun
from support.stacks import run_raw


def host(raw, i=0):
    return raw["hosts"][i]


def model(raw, i=0):
    return raw["models"][i]


def setk(path_fn, **kv):
    def mutate(raw):
        path_fn(raw).update(kv)
    return mutate


def assert_refused_before_any_resource(case: str, stack: str, raw: dict, key: str, fragment: str,
                                       secrets: dict[str, str] | None = None) -> ConfigError:
    """Run the program on `raw` (and `secrets`, as Pulumi secrets): it must raise one ConfigError
    naming `key` (value, allowed, fix) whose message contains `fragment`, with nothing registered."""
    run = MockRun(stack)
    with pytest.raises(ConfigError) as caught:
        run_raw(stack, raw, secrets=secrets, run=run)
    err = caught.value
    message = str(err)
    assert err.key == key, message
    assert f"`vllm-fleet:{key}`" in message
    assert "Allowed:" in message and "Fix:" in message
    assert fragment in message, message
    assert "Traceback" not in message and "\n" not in message
    registered = [r for r in run.resources if r.typ != "pulumi:pulumi:Stack"]
    assert registered == [], f"{case}: resources registered before the error: {[r.name for r in registered]}"
    return err
