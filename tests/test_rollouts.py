"""Changing the fleet without dropping requests (Docker target), as the resource graph shows it."""
from __future__ import annotations

import functools
import http.server
import os
import threading
import time

import pytest

from fleet.config.load import parse_config
from fleet.docker.plan import build_plan
from support.jobs import start_job, wait_job
from support.processes import free_port, stop
from support.stacks import raw_stack, run_raw, stack_run
from test_stack_graphs import rendered_nginx_conf

CONTAINER = "docker:index/container:Container"


def resource(run, name, typ=CONTAINER):
    return next(r for r in run.resources if r.name == name and r.typ == typ)


def deps(run, name) -> set[str]:
    return {d.rsplit("::", 1)[-1] for d in resource(run, name).dependencies}


@pytest.mark.parametrize("stack, chains", [
    ("local", [["qwen-0", "qwen-1"]]),
    ("staging", [["r1-distill-0", "r1-distill-1"]]),
    ("prod", [["llama-70b-0", "llama-70b-1"], ["r1-distill-0", "r1-distill-1"]]),
])
def test_each_replica_waits_for_the_previous_replica_of_its_model(stack, chains):
    run = stack_run(stack)
    for chain in chains:
        first = resource(run, f"{chain[0]}-server")
        assert not any("-server" in d or "-gate" in d for d in deps(run, f"{chain[0]}-server"))  # waits for nobody
        for before, after in zip(chain, chain[1:]):
            # through the previous replica's rollout gate, which waits for that replica's server
            assert f"{before}-rollout-gate" in deps(run, f"{after}-server"), f"{after} does not wait for {before}"
            assert f"{before}-server" in deps(run, f"{before}-rollout-gate")
        assert first.delete_before_replace


def test_replicas_of_different_models_do_not_wait_for_each_other():
    run = stack_run("prod")
    assert not {d for d in deps(run, "r1-distill-0-server") if "llama" in d or "qwen" in d}


def test_named_containers_are_deleted_before_their_replacement_starts_and_jobs_after():
    # A fixed name (and GPUs, ports) must be free first; a job is autonamed: its next version runs
    # before the old one goes. The program says so explicitly: an explicit `False` overrides the
    # provider's own delete-before-replace for containers.
    for name, res in stack_run("prod").containers().items():
        job = labels_of(res)["vllm-fleet.role"] in ("rollout-gate", "nginx-config", "prometheus-targets")
        assert res.delete_before_replace_defined, name
        assert res.delete_before_replace == (not job) == ("name" in res.inputs), name


def scaled(replicas: int):
    raw = raw_stack("local")
    raw["models"][0]["replicas"] = replicas
    raw["hosts"][0]["cpus"] = 2 * replicas
    return run_raw("local", raw)


def test_scaling_changes_only_the_config_job_never_the_nginx_container():
    two, three = scaled(2), scaled(3)
    nginx2, nginx3 = resource(two, "lb-nginx"), resource(three, "lb-nginx")
    assert nginx2.inputs == nginx3.inputs  # identical inputs: Pulumi has nothing to replace
    assert rendered_nginx_conf(two) != rendered_nginx_conf(three)
    assert "local-qwen-2:8000" in rendered_nginx_conf(three)
    # Nginx reads the config from the volume the one-shot job writes, and reloads itself.
    assert {m["target"] for m in nginx2.inputs["mounts"]} == {"/etc/nginx/fleet"}
    assert nginx2.inputs["entrypoints"] == ["/bin/sh", "/usr/local/bin/fleet-nginx.sh"]
    writer = resource(two, "lb-config")
    assert "name" not in writer.inputs and not writer.delete_before_replace  # a new job per config
    assert "lb-config" in deps(two, "lb-nginx") and not {d for d in deps(two, "lb-nginx") if "qwen" in d}


def test_the_nginx_container_does_not_depend_on_replica_outputs():
    # A replica replaced with delete-before-replace takes down only resources whose inputs use its
    # outputs; Nginx only waits for the config job, so it stays up through every rollout.
    run = stack_run("prod")
    assert not {d for d in deps(run, "lb-nginx") if d.endswith("-server")}


# --- draining and the rollout gate ---------------------------------------------------------------


def labels_of(res) -> dict[str, str]:
    return {lbl["label"]: lbl["value"] for lbl in res.inputs["labels"]}


@pytest.mark.parametrize("stack, chains", [
    ("local", [["qwen-0", "qwen-1"]]),
    ("prod", [["llama-70b-0", "llama-70b-1"], ["r1-distill-0", "r1-distill-1"]]),
])
def test_the_next_replica_waits_for_the_rollout_gate_which_is_replaced_with_its_replica(stack, chains):
    run = stack_run(stack)
    lb_host = resource(run, "lb-nginx").provider_name
    for chain in chains:
        for before, after in zip(chain, chain[1:]):
            assert f"{before}-rollout-gate" in deps(run, f"{after}-server")
        for name in chain:  # every replica of a rolled model has one: `pulumi up` ends with all back in Nginx
            gate = resource(run, f"{name}-rollout-gate")
            assert f"{name}-server" in deps(run, f"{name}-rollout-gate")
            # Its trigger is the server container's id: a replaced server means a new gate run.
            assert labels_of(gate)["vllm-fleet.trigger.server-id"] == f"{name}-server-id"
            assert gate.provider_name == lb_host  # it checks the replica from where Nginx reaches it
            assert gate.inputs["wait"] is True and gate.inputs["waitTimeout"] == 600  # `pulumi up` waits for it
            assert gate.create_timeout == "720s"  # and stops the rollout if the replica never answers
            assert "name" not in gate.inputs and not gate.delete_before_replace
            env = dict(e.split("=", 1) for e in gate.inputs["envs"])
            # It probes the replica at the very address Nginx proxies to.
            endpoint = env["FLEET_GATE_URL"].removeprefix("http://").removesuffix("/health")
            assert f"server {endpoint} " in rendered_nginx_conf(run), env["FLEET_GATE_URL"]
            assert env["FLEET_GATE_SETTLE_S"] == "12"  # fail_timeout_s 10 + 2


def test_a_single_replica_model_has_no_gate():
    run = stack_run("prod")
    assert not [r for r in run.resources if r.name.startswith(("qwen-72b", "llama-405b")) and "gate" in r.name]


def test_containers_stop_gracefully_with_the_planned_grace():
    run = stack_run("prod")
    for name, res in run.containers().items():
        role = labels_of(res)["vllm-fleet.role"]
        assert res.inputs["stopTimeout"] == res.inputs["destroyGraceSeconds"], name
        if role in ("vllm", "vllm-worker"):
            assert res.inputs["destroyGraceSeconds"] == 60 + 30, name  # drain_timeout_s + teardown
        if role == "vllm":
            argv = res.inputs["command"]
            assert argv[argv.index("--shutdown-timeout") + 1] == "60", name
        if role == "nginx":
            assert res.inputs["destroyGraceSeconds"] == 600  # streams finish on a graceful quit


def test_drain_timeout_is_configurable_and_zero_aborts():
    raw = raw_stack("local")
    raw["models"][0]["drain_timeout_s"] = 0
    server = resource(run_raw("local", raw), "qwen-0-server")
    # vLLM's own default then (the flag is left out, so images older than vLLM 0.18 still start)
    assert "--shutdown-timeout" not in server.inputs["command"] and server.inputs["destroyGraceSeconds"] == 30


def test_the_gate_waits_for_the_replica_then_for_nginx_bench_to_expire(tmp_path):
    """Against a loopback server that starts answering only after a while."""
    gate = build_plan(parse_config(raw_stack("local"), "local")).replicas[0].gate
    port = free_port()
    t0 = time.monotonic()
    proc, mark, log = start_job(gate, {**os.environ, **gate.env, "FLEET_GATE_URL": f"http://127.0.0.1:{port}/health",
                                       "FLEET_GATE_SETTLE_S": "1"}, tmp_path)
    server = None
    try:
        time.sleep(3)
        assert proc.poll() is None and not mark.exists(), "the gate passed before the replica answered"
        (tmp_path / "health").write_text("ok")
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        passed = wait_job(proc, mark, timeout=30)
        assert passed, log.read_text()
        assert time.monotonic() - t0 >= 3 + 1
        assert "answers; next replica in 1 s" in log.read_text()
    finally:
        stop(proc, timeout=5)
        if server is not None:
            server.shutdown()
    assert proc.returncode == 0  # it stayed until stopped, and a stop ends its idle wait at once
