"""Shared test helpers: run the real Pulumi program for a stack under Pulumi's mocks."""
from __future__ import annotations

import copy
import functools
import json
import os
import shutil

import pytest

from fleet.config.errors import PROJECT
from fleet.config.schema import SECRET_KEYS, TLS_SECRET_KEYS
from support.tls import server_pair
from tools.mock_run import MockRun, read_stack_file, run_program, stack_config

STACKS = ("local", "staging", "prod")
# The shipped stacks' secrets are fake values; these passphrases are documented in each stack file.
PASSPHRASES = {"local": "vllm-fleet-local", "staging": "vllm-fleet-example-only", "prod": "vllm-fleet-example-only"}


@functools.lru_cache(maxsize=None)
def stack_run(stack: str) -> MockRun:
    config, secret_keys, _ = stack_config(read_stack_file(stack), PASSPHRASES[stack])
    return run_program(stack, config, secret_keys)


@functools.lru_cache(maxsize=None)
def stack_secrets(stack: str) -> dict[str, str]:
    return stack_config(read_stack_file(stack), PASSPHRASES[stack])[2]


def raw_stack(stack: str) -> dict:
    """The stack's config values without the project prefix (a deep copy to mutate); an encrypted
    secret is `True` (set), as `parse_config` reads it."""
    doc = read_stack_file(stack)
    return {k.split(":", 1)[1]: True if isinstance(v, dict) and "secure" in v else copy.deepcopy(v)
            for k, v in doc["config"].items()}


def run_raw(stack: str, raw: dict, secrets: dict[str, str] | None = None, run: MockRun | None = None) -> MockRun:
    """Run the program with raw config values; `secrets` (and the secrets `raw` marks as set, with
    a stand-in value) are passed as Pulumi secrets."""
    marked = {k: f"test-stand-in-{k}" for k, v in raw.items() if v is True and k in SECRET_KEYS}
    for k in TLS_SECRET_KEYS:  # PEM: a certificate and the key that belongs to it
        if k in marked:
            marked[k] = server_pair().secrets[k]
    if "client_keys" in marked:  # a map of the declared key names to stand-in keys
        names = [k["name"] for k in (raw.get("load_balancer") or {}).get("keys", [])]
        marked["client_keys"] = json.dumps({n: f"test-stand-in-client-key-{n}-{'0' * 32}" for n in names})
    config = {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items() if k not in marked}
    secret_keys = []
    for k, v in {**marked, **(secrets or {})}.items():
        config[f"{PROJECT}:{k}"] = v
        secret_keys.append(f"{PROJECT}:{k}")
    return run_program(stack, config, secret_keys, run=run)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing: `make setup` installs it")
    pytest.skip(f"{name} is not installed (run `make setup`)")
