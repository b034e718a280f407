"""The host ledger (fleet/docker/ledger.py) on claims no shipped config can produce today, and
the Pulumi names of pulled images: two references must never share one resource name."""
from __future__ import annotations

import pytest

from fleet.config.errors import ConfigError
from fleet.config.load import parse_config
from fleet.docker.container_spec import ContainerSpec, Port
from fleet.docker.ledger import check_claims, image_resource_names
from fleet.docker.plan import build_plan
from support.stacks import raw_stack, run_raw

IMAGE = "docker:index/remoteImage:RemoteImage"


def local_plan():
    return build_plan(parse_config(raw_stack("local"), "local"))


def test_every_shipped_docker_plan_claims_each_thing_once():
    for stack in ("local", "staging", "prod"):
        plan = build_plan(parse_config(raw_stack(stack), stack))
        check_claims(plan.cfg, plan.containers())  # build_plan ran it too: this documents it


@pytest.mark.parametrize("change, fragment", [
    (lambda c: ContainerSpec(**{**c.__dict__, "role": "nginx-exporter", "labels": {}}), "container name `local-qwen-0`"),
    (lambda c: ContainerSpec(**{**c.__dict__, "name": "local-extra", "ports": []}), "core 0"),
])
def test_a_second_claim_on_a_name_or_a_core_is_refused(change, fragment):
    plan = local_plan()
    first = plan.replicas[0].containers[0]
    with pytest.raises(ConfigError) as caught:
        check_claims(plan.cfg, [*plan.containers(), change(first)])
    assert fragment in str(caught.value) and "already uses" in str(caught.value)


def test_ports_collide_only_where_addresses_overlap():
    plan = local_plan()
    nginx = plan.service("nginx")
    other = ContainerSpec(name="local-other", host="local", role="grafana", image="x", labels={})
    for ip, collides in (("127.0.0.1", True), ("0.0.0.0", True), ("127.0.0.2", False), ("::", False)):
        spec = ContainerSpec(**{**other.__dict__, "ports": [Port(3000, nginx.ports[0].external, ip)]})
        if collides:
            with pytest.raises(ConfigError):
                check_claims(plan.cfg, [*plan.containers(), spec])
        else:
            check_claims(plan.cfg, [*plan.containers(), spec])


def test_one_image_through_a_mirror_gets_a_resource_name_of_its_own():
    names = image_resource_names(["vllm/vllm-openai:v0.32.0", "mirror.example:5000/vllm/vllm-openai:v0.32.0",
                                  "nginx:1.28.0-alpine"])
    assert names["nginx:1.28.0-alpine"] == "nginx-1-28-0-alpine"  # a unique slug keeps today's name
    assert len(set(names.values())) == 3
    raw = raw_stack("prod")
    raw["models"][1]["image"] = "mirror.example:5000/vllm/vllm-openai:v0.32.0"  # qwen-72b, on both H100 hosts
    images = [r.name for r in run_raw("prod", raw).resources if r.typ == IMAGE]
    assert len(images) == len(set(images)), images
    assert sum(n.startswith(("h100-a-image-vllm-openai", "h100-b-image-vllm-openai")) for n in images) == 4, images
    assert "l40s-a-image-vllm-openai-v0-32-0" in images  # alone on its host: the name it always had


def test_the_mocks_refuse_two_resources_with_one_urn_as_the_engine_does():
    """Every mock run (tests, `make render`, `make plan`) catches a name derived twice. (Driven at
    the monitor: a program failing mid-registration would leave registrations pending for the next run.)"""
    from pulumi.runtime.proto import resource_pb2

    from tools.mock_run import DuplicateUrn, FleetMocks, MockRun, RecordingMonitor

    monitor = RecordingMonitor(FleetMocks(MockRun("local")))
    request = resource_pb2.RegisterResourceRequest(type="docker:index/volume:Volume", name="local-hf-cache",
                                                   custom=True)
    monitor.RegisterResource(request)
    with pytest.raises(DuplicateUrn, match="Duplicate resource URN"):
        monitor.RegisterResource(request)
