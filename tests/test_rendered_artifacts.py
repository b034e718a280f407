"""Every artifact each stack deploys, checked by the real program that will consume it.

The files come from the program run under Pulumi's mocks (the containers' upload contents and
command lines), so they are byte for byte what `pulumi up` would deploy.
"""
from __future__ import annotations

import json

import pytest

from support.stacks import STACKS, require_tool, stack_run, stack_secrets
from tools.offline_render import render_stack
from support.real_tools import nginx_test, promtool, require_nginx, write_prometheus_tree
from support.vllm_cli import parse_serve_args
from test_stack_graphs import labels, nginx_beside, rendered_nginx_conf, uploads


def vllm_command_lines():
    for stack in STACKS:
        for name, res in stack_run(stack).containers().items():
            if labels(res)["vllm-fleet.role"].startswith("vllm"):
                yield pytest.param(stack, name, res.inputs["entrypoints"], res.inputs["command"], id=name)


@pytest.mark.parametrize("stack", STACKS)
def test_nginx_accepts_the_rendered_config(stack, tmp_path):
    require_nginx()
    run = stack_run(stack)
    result = nginx_test(rendered_nginx_conf(run), tmp_path, nginx_beside(run))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


@pytest.mark.parametrize("policy", ["prefix_affinity", "least_conn", "round_robin", "session_affinity"])
def test_nginx_accepts_every_balancing_policy(policy, tmp_path):
    require_nginx()
    from support.stacks import raw_stack, run_raw

    raw = raw_stack("prod")
    raw["load_balancer"]["policy"] = policy
    run = run_raw("prod", raw)
    conf = rendered_nginx_conf(run)
    result = nginx_test(conf, tmp_path, nginx_beside(run))
    assert result.returncode == 0, result.stderr
    upstreams = conf.split("\n    upstream ")[1:]
    models = [u for u in upstreams if "." not in u.split(" ", 1)[0]]
    replicas = [u for u in upstreams if "." in u.split(" ", 1)[0]]
    # The model's upstream: least_conn also under prefix affinity (health checks, key probes, and
    # the queue when every replica is at its bound).
    assert all(("least_conn;" in u) == (policy in ("least_conn", "prefix_affinity")) for u in models)
    assert ("hash $http_x_session_id consistent;" in conf) == (policy == "session_affinity")
    # Only prefix affinity bounds a replica: one upstream per replica (fleet.js places each request
    # on one), with its own server first and the model's others as backups.
    assert ("max_conns=" in conf) == (policy == "prefix_affinity") == ("js_shared_dict_zone" in conf)
    servers = sum(u.count(" max_fails=") for u in models)
    assert len(replicas) == (servers if policy == "prefix_affinity" else 0)


@pytest.mark.parametrize("stack", STACKS)
def test_promtool_accepts_the_prometheus_config_and_its_rules(stack, tmp_path):
    require_tool("promtool")
    files = uploads(stack_run(stack).containers()[f"{stack}-prometheus"])
    config = write_prometheus_tree(files, tmp_path)
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout  # the rules path resolves as in the container
    rules = tmp_path / "etc/prometheus/rules/vllm-fleet.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert int(checked.stdout.split("SUCCESS: ")[1].split()[0]) >= 8


@pytest.mark.parametrize("stack, name, entrypoint, command", list(vllm_command_lines()))
def test_vllm_own_parser_accepts_every_generated_command_line(stack, name, entrypoint, command):
    assert entrypoint == ["vllm", "serve"]
    ns = parse_serve_args(command)
    assert ns.model == command[0]
    assert ns.tensor_parallel_size * ns.pipeline_parallel_size >= 1
    assert 8000 <= ns.port < 8100


def test_vllm_parser_check_would_catch_a_bad_flag():
    with pytest.raises(ValueError):
        parse_serve_args(["org/model", "--tensor-paralel-size", "2"])


@pytest.mark.parametrize("stack", STACKS)
def test_offline_render_writes_every_artifact_without_a_secret(stack, tmp_path):
    files = render_stack(stack, tmp_path / stack, passphrase={"local": "vllm-fleet-local"}.get(stack, "vllm-fleet-example-only"))
    written = {p.relative_to(tmp_path / stack).as_posix() for p in (tmp_path / stack).rglob("*") if p.is_file()}
    assert written == set(files)
    assert "nginx/nginx.conf" in written and "nginx/usr/local/bin/fleet-nginx.sh" in written
    assert "prometheus/etc/prometheus/prometheus.yml" in written
    assert "prometheus/etc/prometheus/rules/vllm-fleet.yml" in written
    assert "grafana/etc/grafana/provisioning/datasources/prometheus.yml" in written
    assert "grafana/etc/grafana/dashboards/vllm-fleet.json" in written
    assert "resources.txt" in written and "outputs.json" in written
    assert "Placement" in (tmp_path / stack / "plan.txt").read_text()
    replicas = json.loads((tmp_path / stack / "outputs.json").read_text())["replicas"]
    for replica in replicas:
        assert any(w.startswith(f"vllm/{stack}-{replica}") for w in written)
    everything = "".join((tmp_path / stack / w).read_text() for w in written)
    for value in stack_secrets(stack).values():
        assert value not in everything
    assert "[secret]" in everything


def test_offline_render_refuses_to_write_a_leaked_secret(tmp_path, monkeypatch):
    import tools.offline_render as offline

    real = offline.artifacts
    monkeypatch.setattr(offline, "artifacts", lambda run: {**real(run), "leak.txt": "fake-local-api-key-0000"})
    with pytest.raises(SystemExit, match="leak.txt"):
        render_stack("local", tmp_path / "out", passphrase="vllm-fleet-local")
    assert not (tmp_path / "out").exists()
