"""A catalogue of broken stack configs: each fails with one clear error before any resource exists.

Every case runs the real program under Pulumi's mocks and checks that the error names the key,
the offending value, what is allowed and how to fix it, and that nothing was registered.
"""
from __future__ import annotations

import pytest

from support.refusals import assert_refused_before_any_resource, host, model, setk
from support.stacks import raw_stack, run_raw
from fleet.config.errors import ConfigError
from tools.mock_run import MockRun


def lb(raw):
    return raw.setdefault("load_balancer", {})


def mon(raw):
    return raw.setdefault("monitoring", {})


CASES = [
    # (case, base stack, mutation, key in the message, a fragment of the problem or allowed text)
    ("no hosts at all", "local", lambda r: r.update(hosts=[]), "hosts", "at least 1"),
    ("no models at all", "local", lambda r: r.update(models=[]), "models", "at least 1"),
    ("unknown top-level key", "local", lambda r: r.update(modles=[]), "modles", "did you mean `models`"),
    ("unknown model key (typo)", "local", setk(model, replica=3), "models[0].replica", "did you mean `replicas`"),
    ("unknown host key", "staging", setk(host, gpu_count=2), "hosts[0].gpu_count", "unknown key"),
    ("host name not a DNS label", "local", setk(host, name="My Host"), "hosts[0].name", "pattern"),
    ("duplicate host names", "prod", lambda r: r["hosts"][2].update(name="h100-a"), "hosts[2].name", "share this name"),
    ("docker_host with no scheme", "staging", setk(host, docker_host="gpu-staging:2375"), "hosts[0].docker_host", "ssh"),
    ("negative GPU count", "staging", setk(host, gpus=-1), "hosts[0].gpus", ">= 0"),
    ("GPUs without a GPU model", "staging", lambda r: host(r).pop("gpu_model"), "hosts[0].gpu_model", "H100-80GB"),
    ("unknown GPU model", "staging", setk(host, gpu_model="H100"), "hosts[0].gpu_model", "unknown GPU model"),
    ("GPU model on a CPU host", "local", setk(host, gpu_model="L4"), "hosts[0].gpus", "0 GPUs"),
    ("GPU count as text", "staging", setk(host, gpus="two"), "hosts[0].gpus", "integer"),
    ("model missing hf_id", "local", lambda r: model(r).pop("hf_id"), "models[0].hf_id", "required"),
    ("hf_id not org/name", "local", setk(model, hf_id="qwen"), "models[0].hf_id", "org/name"),
    ("zero replicas", "local", setk(model, replicas=0), "models[0].replicas", ">= 1"),
    ("unknown dtype", "local", setk(model, dtype="bf16"), "models[0].dtype", "'bfloat16'"),
    ("unknown quantization", "staging", setk(model, quantization="int4"), "models[0].quantization", "'awq'"),
    ("gpu_memory_utilization above 0.98", "staging", setk(model, gpu_memory_utilization=1.5),
     "models[0].gpu_memory_utilization", "<= 0.98"),
    ("max_model_len too small", "staging", setk(model, max_model_len=8), "models[0].max_model_len", ">= 16"),
    ("temperature above 2", "staging", lambda r: model(r)["sampling"].update(temperature=3), "models[0].sampling.temperature", "<= 2"),
    ("top_p of zero", "staging", lambda r: model(r)["sampling"].update(top_p=0), "models[0].sampling.top_p", "> 0"),
    ("unknown sampling key", "staging", lambda r: model(r)["sampling"].update(topp=0.9), "models[0].sampling.topp",
     "did you mean `top_p`"),
    ("duplicate model names", "prod", lambda r: r["models"][1].update(name="llama-70b"), "models[0].name", "share this name"),
    ("two models served under one name", "prod", lambda r: [m.update(served_model_name="chat") for m in r["models"][:2]],
     "models[0].served_model_name", "same name"),
    ("GPU model on a CPU-only inventory", "local", setk(model, device="gpu"), "models[0].device", "no GPU host"),
    ("CPU model without a CPU host", "staging", setk(model, device="cpu"), "models[0].device", "no CPU host"),
    ("tensor parallel on CPU", "local", setk(model, tensor_parallel_size=2), "models[0].tensor_parallel_size", "unsharded"),
    ("fp8 on pre-Ada GPUs", "staging", lambda r: (host(r).update(gpu_model="A100-80GB"), model(r).update(quantization="fp8")),
     "models[0].quantization", "Ada or Hopper"),
    ("bfloat16 on Turing", "staging", lambda r: host(r).update(gpu_model="T4"), "models[0].dtype", "Ampere"),
    ("more replicas than GPUs", "staging", setk(model, replicas=3), "models[0].replicas", "needs 1 GPUs"),
    ("tensor group larger than any host", "prod", lambda r: r["models"][0].update(tensor_parallel_size=16),
     "models[0].replicas", "tensor groups within one host"),
    ("pipeline across hosts without a NCCL NIC", "prod",
     lambda r: [h.pop("nccl_socket_ifname") for h in r["hosts"][1:3]], "hosts[1].nccl_socket_ifname", "spans hosts"),
    ("draft-model speculation without a draft model", "staging", setk(model, speculative={"method": "draft_model"}),
     "models[0].speculative.model", "needs a draft model"),
    ("ngram speculation with a model", "staging",
     setk(model, speculative={"method": "ngram", "model": "Qwen/Qwen2.5-0.5B"}), "models[0].speculative.model", "no draft model"),
    ("too many speculative tokens", "staging", setk(model, speculative={"method": "ngram", "num_speculative_tokens": 64}),
     "models[0].speculative.num_speculative_tokens", "<= 16"),
    ("prompt lookup outside ngram", "staging",
     setk(model, speculative={"method": "draft_model", "model": "Qwen/Qwen2.5-0.5B", "prompt_lookup_max": 4}),
     "models[0].speculative.prompt_lookup_max", "ngram"),
    ("seed image runtime without an image", "staging", setk(model, runtime="seed-otel"), "models[0].image", "files/vllm/Dockerfile"),
    ("managed flag in extra_args", "staging", setk(model, extra_args=["--tensor-parallel-size=2"]),
     "models[0].extra_args[0]", "set from the stack config"),
    ("managed env var", "staging", setk(model, env={"CUDA_VISIBLE_DEVICES": "0"}), "models[0].env.CUDA_VISIBLE_DEVICES",
     "derived from the inventory"),
    ("unpinned image in staging", "staging", setk(model, image="vllm/vllm-openai:latest"), "models[0].image", "unpinned"),
    ("untagged nginx image in prod", "prod", setk(lb, image="nginx"), "load_balancer.image", "unpinned"),
    ("unknown LB policy", "local", setk(lb, policy="random"), "load_balancer.policy", "'least_conn'"),
    ("a load bound without prefix affinity", "local", setk(lb, policy="least_conn", affinity_bound=8),
     "load_balancer.affinity_bound", "only prefix_affinity"),
    ("a zero load bound", "local", setk(lb, affinity_bound=0), "load_balancer.affinity_bound", ">= 1"),
    ("a load factor without prefix affinity", "local", setk(lb, policy="round_robin", affinity_load_factor=1.5),
     "load_balancer.affinity_load_factor", "only prefix_affinity"),
    ("a load factor below the mean", "local", setk(lb, affinity_load_factor=0.8), "load_balancer.affinity_load_factor",
     ">= 1"),
    ("the key header as session header", "local", setk(lb, session_header="Authorization"),
     "load_balancer.session_header", "not a conversation"),
    ("LB port out of range", "local", setk(lb, port=70000), "load_balancer.port", "<= 65535"),
    ("read timeout shorter than a generation", "local", setk(lb, read_timeout_s=30), "load_balancer.read_timeout_s", ">= 60"),
    ("LB on an unknown host", "prod", setk(lb, host="edge-2"), "load_balancer.host", "no host has this name"),
    ("monitoring on an unknown host", "prod", setk(mon, host="mon"), "monitoring.host", "no host has this name"),
    ("Prometheus port collides with the LB", "local", setk(mon, prometheus_port=8080), "monitoring.prometheus_port", "already used"),
    ("Grafana port collides with Prometheus", "local", setk(mon, grafana_port=9090), "monitoring.grafana_port", "already used"),
    ("bad retention", "local", setk(mon, retention="forever"), "monitoring.retention", "pattern"),
    ("unknown NCCL debug level", "prod", lambda r: r.update(nccl_debug="LOUD"), "nccl_debug", "'WARN'"),
    ("unknown environment", "local", lambda r: r.update(environment="qa"), "environment", "'staging'"),
    ("models not a list", "local", lambda r: r.update(models={"name": "x"}), "models", "list"),
]

# Mistakes between fields: what the plan claims on each host (fleet/docker/ledger.py), the hosts
# themselves, addresses, secrets, CPU cores and GPU models.
MON_ON_H100_A = {"host": "h100-a", "bind_address": "10.30.1.11"}
TOKEN = "hf_" + "Zq8XwP3mK9vL2nR7tY5uB1cD4eF6gH0jAa"  # fake, shaped like a Hugging Face token


def two_gpu_models(raw):
    raw["hosts"] = [{"name": n, "docker_host": f"ssh://deploy@{n}.example", "address": a, "gpus": 4, "gpu_model": g,
                     "nccl_socket_ifname": "eth0"} for n, a, g in (("gpu-a", "10.0.0.1", "H100-80GB"),
                                                                  ("gpu-b", "10.0.0.2", "A100-80GB"))]
    raw["models"] = [{**raw["models"][0], "tensor_parallel_size": 4, "pipeline_parallel_size": 2, "replicas": 1}]


BETWEEN_FIELDS = [
    # ports: every pair of services on one host, published or on the host's network
    ("LB port on the Nginx status port", "prod", lambda r: (mon(r).update(MON_ON_H100_A), lb(r).update(port=8081)),
     "load_balancer.port", "port 8081"),
    ("LB port on the Nginx exporter's", "prod", lambda r: (mon(r).update(MON_ON_H100_A), lb(r).update(port=9113)),
     "load_balancer.port", "the Nginx exporter"),
    ("LB port on a GPU exporter's", "prod", setk(lb, host="h100-a", port=9400), "load_balancer.port", "GPU exporter"),
    ("LB port on a replica's published port", "prod", setk(lb, host="h100-a", port=8000), "load_balancer.port",
     "replica `llama-70b-0`"),
    ("LB port on a host-network replica's API", "prod", setk(lb, host="h100-a", port=8001), "load_balancer.port",
     "replica `qwen-72b-0`"),
    ("Prometheus on a replica's port", "prod", lambda r: mon(r).update(MON_ON_H100_A, prometheus_port=8000),
     "monitoring.prometheus_port", "replica `llama-70b-0`"),
    ("Grafana on a pipeline's rendezvous port", "prod", lambda r: mon(r).update(MON_ON_H100_A, grafana_port=29501),
     "monitoring.grafana_port", "rendezvous"),
    # hosts that are one machine
    ("two hosts at one address", "prod", lambda r: r["hosts"][3].update(address="10.30.1.11"), "hosts[3].address",
     "same machine as `h100-a`"),
    ("two hosts through one Docker engine", "prod",
     lambda r: r["hosts"][2].update(docker_host="ssh://root@H100-A.prod.internal.example:22"), "hosts[2].docker_host",
     "same machine as `h100-a`"),
    # addresses
    ("a host address that is a name", "staging", setk(host, address="gpu-staging.internal"), "hosts[0].address",
     "not an IP address"),
    ("an LB bind address that is a name", "local", setk(lb, bind_address="localhost"), "load_balancer.bind_address",
     "not an IP address"),
    ("monitoring on all IPv4 interfaces", "local", setk(mon, bind_address="0.0.0.0"), "monitoring.bind_address",
     "every interface"),
    ("monitoring on all IPv6 interfaces", "local", setk(mon, bind_address="::"), "monitoring.bind_address",
     "every interface"),
    # secrets
    ("a public API without a key", "staging", lambda r: r.pop("api_key"), "api_key", "no API key"),
    ("a LoadBalancer Service without a key", "prod-k8s", lambda r: r.pop("api_key"), "api_key", "LoadBalancer Service"),
    ("a token under a mistyped top-level key", "local", lambda r: r.update(hf_tokn=TOKEN), "hf_tokn",
     "did you mean `hf_token`"),
    # CPU fleets
    ("a CPU host without its core count", "local", lambda r: host(r).pop("cpus"), "hosts[0].cpus", "does not say how many cores"),
    ("more CPU replicas than cores", "local", setk(host, cpus=1), "hosts[0].cpus", "two would share cores"),
    # mixed GPUs
    ("a pipeline that only fits across two GPU models", "staging", two_gpu_models, "models[0].replicas",
     "hosts of one GPU model"),
]
CASES += BETWEEN_FIELDS


@pytest.mark.parametrize("case, stack, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_broken_config_fails_with_one_clear_error_before_any_resource(case, stack, mutate, key, fragment):
    raw = raw_stack(stack)
    mutate(raw)
    assert_refused_before_any_resource(case, stack, raw, key, fragment)


def test_the_catalogue_is_large():
    assert len(CASES) >= 40


def test_no_refusal_prints_a_secret():
    for case, stack, mutate, *_ in CASES:
        raw = raw_stack(stack)
        mutate(raw)
        with pytest.raises(ConfigError) as caught:
            run_raw(stack, raw)
        assert TOKEN not in str(caught.value) and "test-stand-in" not in str(caught.value), case


def test_a_plain_text_secret_is_refused():
    from tools.mock_run import run_program
    import json

    raw = raw_stack("local")
    config = {f"vllm-fleet:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    config["vllm-fleet:api_key"] = "sk-plain-text"
    run = MockRun("local")
    with pytest.raises(ConfigError) as caught:
        run_program("local", config, [], run=run)
    assert caught.value.key == "api_key"
    assert "sk-plain-text" not in str(caught.value)
    assert "pulumi config set --secret api_key" in str(caught.value)


@pytest.mark.parametrize("key, value", [("api_key", ""), ("api_key", "   "), ("api_key", "sk-fleet key\n"),
                                        ("hf_token", ""), ("grafana_admin_password", "\t")])
def test_an_empty_or_blank_secret_is_refused_without_showing_it(key, value):
    run = MockRun("staging")
    with pytest.raises(ConfigError) as caught:
        run_raw("staging", raw_stack("staging"), secrets={key: value}, run=run)
    assert caught.value.key == key and "<secret, not shown>" in str(caught.value)
    assert value.strip() not in str(caught.value) or not value.strip()
    assert [r for r in run.resources if r.typ != "pulumi:pulumi:Stack"] == []
