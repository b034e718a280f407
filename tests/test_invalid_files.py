"""A catalogue of broken stack *files*: mistakes that live in the file rather than in one value.

Each case copies a shipped stack file, edits its text as a user would get it wrong (a key written
twice, a tab, a syntax slip, a misspelled namespace, a wrong passphrase, an enum in the wrong case,
a secret under a mistyped key) and runs the real tools on it, as `make render` and `make plan` do:
one clear error line naming the file, line and column, what is allowed and the fix; exit code 2;
no traceback; no secret. The program's own path (what `pulumi up` runs) is checked under mocks.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pydantic
import pytest
import yaml
from pydantic import BaseModel

from fleet.config import load
from fleet.config.errors import ConfigError
from fleet.config.load import StackFileError, from_validation_error, read_stack_yaml
from fleet.config.schema import FleetConfig
from fleet.config.secrets import SHOWN
from tools.mock_run import ROOT, MockRun, read_stack_file, run_program, stack_config

SHIPPED = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
# The shipped stacks' secrets are fake values; each file's header names its passphrase.
PASSPHRASE = {s: "vllm-fleet-local" if s == "local" else "vllm-fleet-example-only" for s in SHIPPED}
TOKEN = "hf_" + "Zq7Xw2Lm9Rt4Vb8Nc3Kd6Ps1"  # a made-up, token-shaped value planted in broken files


@functools.lru_cache(maxsize=None)
def every_secret() -> tuple[str, ...]:
    """The decrypted values of every shipped stack's secrets: none may appear in any message."""
    values = [v for s in SHIPPED for v in stack_config(read_stack_file(s), PASSPHRASE[s])[2].values()]
    assert values and all(values)
    return (*values, TOKEN)


def broken_stack(tmp_path: Path, base: str, edits: list[tuple[str, str]]) -> tuple[str, str]:
    """`stacks/Pulumi.<base>.yaml` with each (old, new) text edit applied once, written to tmp_path
    as the stack `<base>-broken`. Returns the stack name and the edited text."""
    text = (ROOT / "stacks" / f"Pulumi.{base}.yaml").read_text()
    for old, new in edits:
        assert text.count(old) >= 1, f"{old!r} is not in Pulumi.{base}.yaml"
        text = text.replace(old, new, 1)
    stack = f"{base}-broken"
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(text)
    return stack, text


def tool(tmp_path: Path, name: str, stack: str, passphrase: str | None) -> subprocess.CompletedProcess:
    args = ["--out", str(tmp_path / "out")] if name == "offline_render" else []
    env = {k: v for k, v in os.environ.items() if k != "PULUMI_CONFIG_PASSPHRASE"}
    if passphrase is not None:
        env["PULUMI_CONFIG_PASSPHRASE"] = passphrase
    return subprocess.run([sys.executable, "-m", f"tools.{name}", stack, *args, "--stacks-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def assert_one_clear_error(result: subprocess.CompletedProcess, fragment: str) -> str:
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out, out
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    assert "Allowed:" in lines[0] and "Fix:" in lines[0], lines[0]
    assert fragment in lines[0], lines[0]
    leaked = [s for s in every_secret() if s in out]
    assert not leaked, f"a secret value is printed: {lines[0]}"
    return lines[0]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the nth occurrence of `needle` in `text`."""
    at = -1
    for _ in range(nth):
        at = text.index(needle, at + 1)
    return text.count("\n", 0, at) + 1


PORT = "    port: 8080\n"
API_KEY = "  vllm-fleet:api_key:\n"

# (case, base stack, text edits, a fragment of the error, the text whose line the error names (, nth))
FILE_CASES = [
    ("a key written twice in one mapping", "local", [(PORT, PORT + "    port: 9090\n")],
     "key `port` is written twice in one mapping", ("    port: 9090", 1)),
    ("a config key written twice", "prod", [("config:\n", "config:\n  vllm-fleet:environment: dev\n")],
     "key `vllm-fleet:environment` is written twice", ("vllm-fleet:environment", 2)),
    ("a key both without and with the project's namespace", "local", [("config:\n", "config:\n  environment: dev\n")],
     "`vllm-fleet:environment` is written twice, as `environment` and as `vllm-fleet:environment`",
     ("vllm-fleet:environment", 1)),
    ("a tab in the indentation", "local", [(PORT, "\tport: 8080\n")],
     "a tab character where YAML needs spaces", ("\tport", 1)),
    ("a tab after a key's colon", "staging", [("    port: ", "    port:\t")],
     "a tab character where YAML needs spaces", ("port:\t", 1)),
    ("a colon missing after a key", "local", [("  vllm-fleet:load_balancer:\n", "  vllm-fleet:load_balancer\n")],
     "is not valid YAML", None),
    ("an unclosed quote", "local", [("hf_id: Qwen/", 'hf_id: "Qwen/')],
     "is not valid YAML", None),
    ("an item indented one space off", "prod", [("    - name: h100-a\n", "     - name: h100-a\n")],
     "is not valid YAML", None),
    ("a section under `vllm_fleet:` (underscore)", "local", [("vllm-fleet:models", "vllm_fleet:models")],
     "did you mean `vllm-fleet:models`", ("vllm_fleet:models", 1)),
    ("a section under `vllm-flet:` (a letter missing)", "staging", [("vllm-fleet:hosts", "vllm-flet:hosts")],
     "did you mean `vllm-fleet:hosts`", ("vllm-flet:hosts", 1)),
    ("a secret under `vllmfleet:` (no hyphen)", "prod", [(API_KEY, "  vllmfleet:api_key:\n")],
     "did you mean `vllm-fleet:api_key`", ("vllmfleet:api_key", 1)),
    ("a section under `VLLM-Fleet:` (case)", "local", [("vllm-fleet:load_balancer", "VLLM-Fleet:load_balancer")],
     "did you mean `vllm-fleet:load_balancer`", ("VLLM-Fleet", 1)),
    ("a Kubernetes toleration operator in lower case", "prod-k8s", [("operator: Exists", "operator: exists")],
     "input should be 'Equal' or 'Exists'", None),
    ("a Kubernetes service type in lower case", "prod-k8s", [("service_type: LoadBalancer", "service_type: loadbalancer")],
     "'ClusterIP', 'LoadBalancer' or 'NodePort'", None),
    ("NCCL debug level in lower case", "prod", [("config:\n", "config:\n  vllm-fleet:nccl_debug: info\n")],
     "'VERSION', 'WARN', 'INFO' or 'TRACE'", None),
    ("an encrypted secret under a mistyped key", "local", [(API_KEY, "  vllm-fleet:api_kye:\n")],
     f"`vllm-fleet:api_kye` = '{SHOWN}': unknown key", None),
    ("a plain-text token under an unknown key", "local", [("config:\n", f"config:\n  vllm-fleet:hf_tokn: {TOKEN}\n")],
     "`vllm-fleet:hf_tokn` = '<secret, not shown>'", None),
    ("a plain-text token under an unknown model key", "local", [("      replicas: 2\n", f"      replicas: 2\n      hf_tokn: {TOKEN}\n")],
     "`vllm-fleet:models[0].hf_tokn` = '<secret, not shown>'", None),
]


@pytest.mark.parametrize("tool_name", ["offline_render", "plan_report"])
@pytest.mark.parametrize("case,base,edits,fragment,where", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_a_broken_stack_file_gets_one_clear_error(tmp_path, tool_name, case, base, edits, fragment, where):
    stack, text = broken_stack(tmp_path, base, edits)
    message = assert_one_clear_error(tool(tmp_path, tool_name, stack, PASSPHRASE[base]), fragment)
    if where is not None:
        assert f"Pulumi.{stack}.yaml:{line_of(text, *where)}:" in message, message


def test_a_wrong_passphrase_names_the_stack_and_the_fix(tmp_path):
    stack, _ = broken_stack(tmp_path, "local", [])
    message = assert_one_clear_error(tool(tmp_path, "offline_render", stack, "not-the-passphrase"),
                                     f"PULUMI_CONFIG_PASSPHRASE does not decrypt the secrets of stack `{stack}`")
    assert "unset it to render with stand-in secrets" in message
    assert not (tmp_path / "out").exists()


def test_another_stacks_passphrase_is_refused_too(tmp_path):
    stack, _ = broken_stack(tmp_path, "prod", [])
    assert_one_clear_error(tool(tmp_path, "offline_render", stack, PASSPHRASE["local"]), "does not decrypt the secrets")


def test_a_secret_copied_from_another_stack_names_its_key(tmp_path):
    """The passphrase is right, but one value was encrypted with another stack's key."""
    prod_key = (ROOT / "stacks/Pulumi.prod.yaml").read_text().split(API_KEY)[1].splitlines()[0]
    local_key = (ROOT / "stacks/Pulumi.local.yaml").read_text().split(API_KEY)[1].splitlines()[0]
    stack, text = broken_stack(tmp_path, "local", [(local_key, prod_key)])
    message = assert_one_clear_error(tool(tmp_path, "offline_render", stack, PASSPHRASE["local"]),
                                     "the secret `vllm-fleet:api_key` does not decrypt with this stack's passphrase")
    assert f":{line_of(text, API_KEY)}:" in message
    assert "pulumi config set --secret api_key" in message


def test_the_providers_own_namespaces_still_work(tmp_path):
    extra = ("  docker:host: unix:///var/run/docker.sock\n  kubernetes:context: kind-dev\n"
             "  pulumi:tags:\n    team: ml\n  aws:region: eu-west-1\n  random:seed: x\n")
    stack, _ = broken_stack(tmp_path, "local", [("config:\n", "config:\n" + extra)])
    for name in ("offline_render", "plan_report"):
        result = tool(tmp_path, name, stack, PASSPHRASE["local"])
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("stack", SHIPPED)
def test_the_strict_reader_reads_every_shipped_stack_as_pyyaml_does(stack):
    path = ROOT / "stacks" / f"Pulumi.{stack}.yaml"
    assert dict(read_stack_yaml(path)) == yaml.safe_load(path.read_text())


# --- every enum error lists the allowed values as they must be written ------------------------


def _literal_fields() -> list[tuple[str, typing.Any]]:
    found, todo, seen = [], [FleetConfig], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, field in cls.model_fields.items():
            choices = [a for a in load._flat_args(field.annotation) if isinstance(a, str)]
            if choices:
                found.append((f"{cls.__name__}.{name}", field.annotation, choices))
            inner = load._inner_model(field.annotation)
            if inner is not None:
                todo.append(inner)
    return found


LITERALS = _literal_fields()


def test_the_schema_has_enum_fields_in_mixed_case():
    assert any(any(c != c.lower() for c in choices) for _, _, choices in LITERALS)


@pytest.mark.parametrize("field,annotation,choices", LITERALS, ids=[f for f, _, _ in LITERALS])
def test_an_enum_error_spells_every_allowed_value_as_written(field, annotation, choices):
    class Probe(BaseModel):
        value: annotation

    with pytest.raises(pydantic.ValidationError) as caught:
        Probe(value="NOT-A-CHOICE")
    message = str(from_validation_error(caught.value, {}, "local"))
    for choice in choices:
        assert repr(choice) in message, message


# --- the program (`pulumi up`) refuses the same mistakes, before any resource --------------------


def shipped_config(stack: str) -> tuple[dict[str, str], list[str], dict[str, str]]:
    return stack_config(read_stack_file(stack), PASSPHRASE[stack])


def assert_program_refuses(stack: str, config: dict[str, str], secret_keys: list[str], fragment: str) -> ConfigError:
    run = MockRun(stack)
    with pytest.raises(ConfigError) as caught:
        run_program(stack, config, secret_keys, run=run)
    message = str(caught.value)
    assert fragment in message, message
    assert "Allowed:" in message and "Fix:" in message and "\n" not in message
    assert not [s for s in every_secret() if s in message], message
    assert [r.name for r in run.resources if r.typ != "pulumi:pulumi:Stack"] == []
    return caught.value


@pytest.mark.parametrize("namespace", ["vllm_fleet", "vllm-flet", "vllmfleet", "VLLM-FLEET"])
def test_the_program_refuses_a_misspelled_namespace(namespace):
    config, secret_keys, _ = shipped_config("staging")
    config[f"{namespace}:models"] = config.pop("vllm-fleet:models")
    err = assert_program_refuses("staging", config, secret_keys, "did you mean `vllm-fleet:models`")
    assert isinstance(err, StackFileError)


def test_the_program_never_prints_a_decrypted_secret_under_a_mistyped_key():
    config, secret_keys, plain = shipped_config("prod")
    config["vllm-fleet:hf_tokn"] = config.pop("vllm-fleet:hf_token")
    secret_keys = [k.replace("hf_token", "hf_tokn") for k in secret_keys]
    err = assert_program_refuses("prod", config, secret_keys, "unknown key")
    assert err.key == "hf_tokn" and err.value == SHOWN
    assert plain["vllm-fleet:hf_token"] not in str(err)


def test_the_program_reads_its_own_stack_file_strictly(tmp_path, monkeypatch):
    """`pulumi up` runs with stacks/Pulumi.<stack>.yaml: a key written twice there is refused, as
    Pulumi's CLI itself does, whatever config the engine passed."""
    (tmp_path / "stacks").mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    text = (ROOT / "stacks/Pulumi.local.yaml").read_text().replace(PORT, PORT + "    port: 9090\n", 1)
    (tmp_path / "stacks/Pulumi.local.yaml").write_text(text)
    monkeypatch.setattr(load, "PROJECT_ROOT", tmp_path)
    config, secret_keys, _ = shipped_config("local")
    assert_program_refuses("local", config, secret_keys, f"Pulumi.local.yaml:{line_of(text, 'port: 9090')}:5: key `port`")
