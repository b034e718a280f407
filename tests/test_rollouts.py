"""Changing the fleet without dropping requests (Docker target), as the resource graph shows it."""
from __future__ import annotations

import pytest

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
        assert not any("-server" in d for d in deps(run, f"{chain[0]}-server"))  # the first one waits for nobody
        for before, after in zip(chain, chain[1:]):
            assert f"{before}-server" in deps(run, f"{after}-server"), f"{after} does not wait for {before}"
        assert first.delete_before_replace


def test_replicas_of_different_models_do_not_wait_for_each_other():
    run = stack_run("prod")
    assert not {d for d in deps(run, "r1-distill-0-server") if "llama" in d or "qwen" in d}


def test_replica_containers_are_deleted_before_their_replacement_starts():
    for name, res in stack_run("prod").containers().items():
        role = dict((lbl["label"], lbl["value"]) for lbl in res.inputs["labels"])["vllm-fleet.role"]
        assert res.delete_before_replace == role.startswith("vllm"), name


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
    assert "name" not in writer.inputs and writer.inputs["mustRun"] is False  # a new job per config
    assert "lb-config" in deps(two, "lb-nginx") and not {d for d in deps(two, "lb-nginx") if "qwen" in d}


def test_the_nginx_container_does_not_depend_on_replica_outputs():
    # A replica replaced with delete-before-replace takes down only resources whose inputs use its
    # outputs; Nginx only waits for the config job, so it stays up through every rollout.
    run = stack_run("prod")
    assert not {d for d in deps(run, "lb-nginx") if d.endswith("-server")}
