"""A catalogue of mistakes in what a stack passes to vLLM: its flags (`models[].extra_args`), its
environment (`models[].env`) and its images. Each is refused with one clear error before any
resource exists, naming the list item or variable, never showing a credential.

The program reads vLLM's own option table (files/vllm/serve-flags-<version>.json, written from the
pinned vLLM's parser by `python -m tools.vllm_flags`): the second half of this module regenerates
it from the installed vLLM and checks, case by case, that vLLM itself reads each spelling the same
way and refuses what the program refuses.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from fleet import vllm_command as vc
from fleet.config import image_refs, vllm_env, vllm_flags
from fleet.config.load import parse_config
from fleet.config.schema import Model
from support.refusals import assert_refused_before_any_resource, model
from support.stacks import raw_stack, run_raw

TOKEN = "hf_" + "Qm4XwP3mK9vL2nR7tY5uB1cD4eF6gH0jZz"  # fake, shaped like a Hugging Face token
KEY = "sk-" + "fleetTest0123456789abcdefABCDEF"        # fake, shaped like an OpenAI-style API key


def args(*items, i=0):
    return lambda r: model(r, i).update(extra_args=list(items))


def env(i=0, **kv):
    return lambda r: model(r, i).update(env=kv)


def image(ref, i=0, **more):
    return lambda r: model(r, i).update(image=ref, **more)


def section(name, **kv):
    return lambda r: r.setdefault(name, {}).update(kv)


# (case, stack, mutation, key in the message, a fragment of the message)
SPELLINGS = [  # a managed flag in every spelling vLLM accepts
    ("underscores", "staging", args("--max_model_len", "8192"), "models[0].extra_args[0]", "`models[0].max_model_len`"),
    ("short alias", "prod", args("-tp", "8"), "models[0].extra_args[0]", "`models[0].tensor_parallel_size`"),
    ("--flag=value", "staging", args("--gpu-memory-utilization=0.95"), "models[0].extra_args[0]",
     "`models[0].gpu_memory_utilization`"),
    ("flag and value in one item", "local", args("--max-model-len 8192"), "models[0].extra_args[0]",
     "`models[0].max_model_len`"),
    ("the --no- form", "staging", args("--no-enable-prefix-caching"), "models[0].extra_args[0]",
     "`models[0].enable_prefix_caching`"),
    ("an abbreviation argparse expands", "staging", args("--max-model", "8192"), "models[0].extra_args[0]",
     "spelled `--max-model`"),
    ("a key of a JSON flag", "prod", args("--speculative-config.method", "ngram", i=2), "models[2].extra_args[0]",
     "`models[2].speculative`"),
    ("short quantization alias with =", "staging", args("-q=awq"), "models[0].extra_args[0]", "`models[0].quantization`"),
    ("a flag vLLM merges into the speculative config", "staging", args("--spec-method", "ngram"),
     "models[0].extra_args[0]", "--speculative-config"),
    ("the drain flag", "staging", args("--shutdown-timeout", "10"), "models[0].extra_args[0]", "`models[0].drain_timeout_s`"),
    ("the listen port", "local", args("--port", "9000"), "models[0].extra_args[0]", "assigns each replica's port"),
    ("data parallelism", "staging", args("-dp", "2"), "models[0].extra_args[0]", "`models[0].replicas`"),
    ("a data-parallel spelling with underscores", "prod", args("--data_parallel_size_local=2"),
     "models[0].extra_args[0]", "data parallelism"),
    ("the API key as a flag", "staging", args("--api-key", "letmein"), "models[0].extra_args[0]",
     "pulumi config set --secret api_key"),
    ("the model cache directory", "prod", args("--download-dir", "/data/models"), "models[0].extra_args[0]", "hf_cache_dir"),
    ("a vLLM config file", "staging", args("--config", "/etc/vllm.yaml"), "models[0].extra_args[0]", "YAML file"),
    ("a later item after a good one", "staging", args("--enforce-eager", "-pp", "2"), "models[0].extra_args[1]",
     "pipeline_parallel_size"),
]
PARSING = [  # what vLLM's parser itself refuses
    ("an unknown flag", "staging", args("--enforce-eagre"), "models[0].extra_args[0]", "did you mean `--enforce-eager`"),
    ("a flag of another program", "local", args("--num-gpus", "1"), "models[0].extra_args[0]", "not a flag of `vllm serve`"),
    ("an ambiguous abbreviation", "staging", args("--max-num", "8"), "models[0].extra_args[0]", "ambiguous"),
    ("a bad choice", "staging", args("--scheduling-policy", "lifo"), "models[0].extra_args[0]", "one of fcfs, priority"),
    ("a bad choice after =", "local", args("--tokens-only", "--uvicorn-log-level=loud"), "models[0].extra_args[1]",
     "one of critical"),
    ("a bad type", "staging", args("--max-logprobs", "many"), "models[0].extra_args[0]", "an integer"),
    ("a bad human-readable integer", "staging", args("--max-num-scheduled-tokens", "1.5K"), "models[0].extra_args[0]",
     "4k or 4K"),
    ("bad JSON", "staging", args("--compilation-config", "{mode: 3}"), "models[0].extra_args[0]", "a JSON object"),
    ("an unknown key of a JSON flag", "staging", args("--compilation-config", '{"mdoe": 3}'), "models[0].extra_args[0]",
     "keys among"),
    ("an unknown dotted key", "staging", args("--compilation-config.mdoe", "3"), "models[0].extra_args[0]",
     "did you mean `mode`"),
    ("a value flag without its value", "staging", args("--seed"), "models[0].extra_args[0]", "expects a value"),
    ("a value after a switch", "staging", args("--enforce-eager", "true"), "models[0].extra_args[1]",
     "value with no flag before it"),
    ("a switch given a value", "staging", args("--enforce-eager=true"), "models[0].extra_args[0]", "takes no value"),
    ("an unmanaged flag and its value in one item", "staging", args("--max-logprobs 10"), "models[0].extra_args[0]",
     "share one list item"),
]
HARDWARE = [  # flags that need GPUs or a platform the replica does not have, and startup combinations
    ("prefill context parallelism on one GPU", "staging", args("-pcp", "2"), "models[0].extra_args[0]",
     "owns 1 GPU"),
    ("prefill context parallelism on a CPU replica", "local", args("--prefill-context-parallel-size=2"),
     "models[0].extra_args[0]", "owns 0 GPUs"),
    ("sleep mode on a CPU replica", "local", args("--enable-sleep-mode"), "models[0].extra_args[0]", "not on a CPU replica"),
    ("a CUDA-only kernel on a CPU replica", "local", args("--kda-prefill-backend", "flashkda"), "models[0].extra_args[0]",
     "only on cuda"),
    ("a ROCm-only kernel on NVIDIA GPUs", "staging", args("--kda-prefill-backend", "fused"), "models[0].extra_args[0]",
     "only on rocm"),
    ("decode context parallelism that does not divide the tensor group", "prod", args("-dcp", "3"),
     "models[0].extra_args[0]", "does not divide tensor_parallel_size (4)"),
    ("elastic EP without EPLB", "staging", args("--enable-elastic-ep"), "models[0].extra_args[0]", "without EPLB"),
    ("elastic EP with a pipeline", "prod", args("--enable-eplb", "--enable-elastic-ep", i=1), "models[1].extra_args[1]",
     "pipeline_parallel_size 2"),
    ("no chunked prefill below the context length", "staging",
     lambda r: model(r).update(max_num_batched_tokens=2048, extra_args=["--no-enable-chunked-prefill"]),
     "models[0].extra_args[0]", "below max_model_len (16384)"),
    ("more active sequences than sequences", "staging",
     lambda r: model(r).update(max_num_seqs=64, extra_args=["--max-num-active-seqs", "128"]),
     "models[0].extra_args[0]", "above max_num_seqs (64)"),
    ("a long-prefill threshold above the context", "local", args("--long-prefill-token-threshold", "8192"),
     "models[0].extra_args[0]", "above max_model_len (4096)"),
    ("on Kubernetes too", "prod-k8s", args("-dcp", "3"), "models[0].extra_args[0]", "does not divide"),
]
TOKENS_IN_ARGS = [
    ("a token as the value of vLLM's token flag", "staging", args("--hf-token", TOKEN), "models[0].extra_args[1]",
     "credential in plain text"),
    ("a token inside another flag's value", "local", args(f"--otlp-traces-endpoint=https://x:{KEY}@otel.example"),
     "models[0].extra_args[0]", "credential in plain text"),
]
ENVIRONMENT = [
    ("the cache under another name", "staging", env(HF_HUB_CACHE="/tmp/hf"), "models[0].env.HF_HUB_CACHE", "hf_cache_dir"),
    ("the cache under its old name", "prod", env(TRANSFORMERS_CACHE="/tmp/hf"), "models[0].env.TRANSFORMERS_CACHE",
     "mounted volume"),
    ("the GPUs under vLLM's name", "staging", env(CUDA_VISIBLE_DEVICES="0,1"), "models[0].env.CUDA_VISIBLE_DEVICES",
     "its GPUs"),
    ("the GPUs under ROCm's name", "prod", env(ROCR_VISIBLE_DEVICES="0"), "models[0].env.ROCR_VISIBLE_DEVICES", "its GPUs"),
    ("NCCL's interface", "prod", env(NCCL_SOCKET_IFNAME="eth1"), "models[0].env.NCCL_SOCKET_IFNAME", "nccl_socket_ifname"),
    ("NCCL's P2P level", "staging", env(NCCL_P2P_LEVEL="SYS"), "models[0].env.NCCL_P2P_LEVEL", "nvlink"),
    ("the API key", "staging", env(VLLM_API_KEY="letmein"), "models[0].env.VLLM_API_KEY", "pulumi config set --secret api_key"),
    ("the keep-alive", "local", env(VLLM_HTTP_TIMEOUT_KEEP_ALIVE="5"), "models[0].env.VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
     "keep-alive"),
    ("the machine's address", "prod", env(VLLM_HOST_IP="10.0.0.9"), "models[0].env.VLLM_HOST_IP", "address"),
    ("vLLM's internal port", "staging", env(VLLM_PORT="12345"), "models[0].env.VLLM_PORT", "ports"),
    ("CPU pinning", "local", env(VLLM_CPU_OMP_THREADS_BIND="all"), "models[0].env.VLLM_CPU_OMP_THREADS_BIND", "own cores"),
    ("data parallelism through the environment", "staging", env(VLLM_DP_SIZE="2"), "models[0].env.VLLM_DP_SIZE", "replicas"),
    ("usage statistics back on", "local", env(VLLM_NO_USAGE_STATS="0"), "models[0].env.VLLM_NO_USAGE_STATS", "usage"),
    ("an override on Kubernetes", "prod-k8s", env(HF_HOME="/models"), "models[0].env.HF_HOME", "kubernetes.hf_cache"),
    ("a misspelt vLLM variable", "local", env(VLLM_CPU_KVCACHE_SPAC="4"), "models[0].env.VLLM_CPU_KVCACHE_SPAC",
     "did you mean `VLLM_CPU_KVCACHE_SPACE`"),
    ("a token by its name", "staging", env(OPENAI_API_KEY="abc123def"), "models[0].env.OPENAI_API_KEY",
     "its name says it holds a credential"),
    ("a token by its value", "prod", env(2, MODEL_SOURCE=TOKEN), "models[2].env.MODEL_SOURCE", "looks like a credential"),
    ("Hugging Face's old token name", "local", env(HUGGING_FACE_HUB_TOKEN="abc"), "models[0].env.HUGGING_FACE_HUB_TOKEN",
     "pulumi config set --secret hf_token"),
]
IMAGES = [
    ("a short sha256 digest", "staging", image("vllm/vllm-openai@sha256:abc123"), "models[0].image", "64 lower-case hex"),
    ("an upper-case sha256 digest", "prod", image("vllm/vllm-openai@sha256:" + "AB" * 32), "models[0].image",
     "64 lower-case hex"),
    ("an upper-case repository", "staging", image("vllm/VLLM-openai:v0.32.0"), "models[0].image", "lower-case"),
    ("a tag with a bad character", "prod-k8s", image("vllm/vllm-openai:v0.32.0+cu128"), "models[0].image", "tag"),
    ("a registry port that is not a number", "staging", image("registry.example.com:port/vllm/vllm-openai:v0.32.0"),
     "models[0].image", "registry"),
    ("spaces in the reference", "local", section("load_balancer", image="nginx: 1.28"), "load_balancer.image",
     "not a valid image reference"),
    ("a malformed monitoring image", "prod", section("monitoring", grafana_image="grafana//grafana-oss:11.6.0"),
     "monitoring.grafana_image", "repository"),
    ("an old vLLM with the drain flag", "staging", image("vllm/vllm-openai:v0.17.1"), "models[0].image",
     "vLLM 0.17.1 lacks `--shutdown-timeout`"),
    ("an old vLLM through a mirror", "prod", image("registry.example.com/vllm/vllm-openai:v0.10.2", 1), "models[1].image",
     "drain_timeout_s: 0"),
    ("an old CPU image", "local", image("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.9.0"), "models[0].image",
     "vLLM >= 0.18.0"),
    ("an old vLLM on Kubernetes", "prod-k8s", image("vllm/vllm-openai:v0.15.0"), "models[0].image", "--shutdown-timeout"),
]
CASES = SPELLINGS + PARSING + HARDWARE + TOKENS_IN_ARGS + ENVIRONMENT + IMAGES


@pytest.mark.parametrize("case, stack, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_in_what_vllm_receives_is_refused_before_any_resource(case, stack, mutate, key, fragment):
    raw = raw_stack(stack)
    mutate(raw)
    err = assert_refused_before_any_resource(case, stack, raw, key, fragment)
    assert TOKEN not in str(err) and KEY not in str(err) and "abc123def" not in str(err), case


ACCEPTED = [
    ("switches and values vLLM accepts", "staging",
     args("--enforce-eager", "-O3", "--max-logprobs", "5", "--scheduling-policy=priority", "--moe-backend", "TRITON",
          "--enable-sleep-mode", "--compilation-config.mode", "3", "--max_log_len=200", "--no-enable-log-requests")),
    ("the data plane tests' dummy weights", "local", args("--load-format", "dummy")),
    ("a value that looks like a negative number", "staging", args("--seed", "-1")),
    ("decode context parallelism inside the tensor group", "prod", args("-dcp", "2")),
    ("elastic EP with EPLB and no pipeline", "prod", args("--enable-eplb", "--enable-elastic-ep")),
    ("variables the program does not set", "local",
     env(VLLM_LOGGING_LEVEL="DEBUG", OMP_NUM_THREADS="4", VLLM_MAX_TOKENS_PER_EXPERT_FP4_MOE="8")),
    ("an old vLLM without the drain flag", "staging", image("vllm/vllm-openai:v0.17.1", drain_timeout_s=0)),
    ("a digest, whose vLLM release is unknown", "staging", image("vllm/vllm-openai@sha256:" + "0a" * 32)),
    ("a custom build's own tag", "staging", image("registry.example.com:5000/team/vllm-otel:0.3", runtime="seed-otel")),
    ("a tag and a digest", "prod", image("vllm/vllm-openai:v0.32.0@sha256:" + "f" * 64)),
]


@pytest.mark.parametrize("case, stack, mutate", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_what_vllm_accepts_and_the_program_does_not_own_is_accepted(case, stack, mutate):
    raw = raw_stack(stack)
    mutate(raw)
    assert run_raw(stack, raw).resources, case


def test_the_catalogue_covers_every_kind():
    assert len(CASES) >= 60
    assert {c[1] for c in CASES} == {"local", "staging", "prod", "prod-k8s"}


# --- the same cases through vLLM itself --------------------------------------------------------

vllm = pytest.importorskip("vllm")
from support.vllm_cli import parse_serve_args, vllm_parser  # noqa: E402
from tools import vllm_flags as flags_tool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_option_table_is_what_the_installed_vllm_has():
    assert vllm_flags.SNAPSHOT.read_text() == flags_tool.render(), \
        f"{vllm_flags.SNAPSHOT.relative_to(ROOT)} is stale: run `python -m tools.vllm_flags`"


def _serve_actions() -> list[argparse.Action]:
    sub = next(a for a in vllm_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["serve"]._actions if a.option_strings and a.nargs != 0]


PROBES = ("7", "-1", "0", "1.5", "1k", "4K", "1.5K", "auto", "AUTO", "{}", '{"a": 1}', "{a}", "[1]", "x", "",
          "None", "TRITON", "true", "3,1", "a,b")


def test_the_program_reads_every_value_as_vllm_does():
    """For every option and probe: the program accepts the value exactly when vLLM's own type and
    choices do (argparse's _get_values: type, then choices)."""
    disagree = []
    for action in _serve_actions():
        opt = vllm_flags.table().by_dest[action.dest]
        for v in PROBES + tuple(str(c) for c in (action.choices or ()) if c is not None):
            try:
                x = action.type(v) if action.type else v
                ok_vllm = action.choices is None or x in action.choices
            except (argparse.ArgumentTypeError, TypeError, ValueError):
                ok_vllm = False
            try:
                vllm_flags.convert(opt, v)
                ok_ours = True
            except (ValueError, TypeError, ArithmeticError):
                ok_ours = False
            if ok_vllm != ok_ours:
                disagree.append(f"{action.option_strings[0]} {v!r}: vLLM {ok_vllm}, program {ok_ours}")
    assert not disagree, disagree


def _argv(mutate, stack) -> tuple[Model, list[str]]:
    raw = raw_stack(stack)
    mutate(raw)
    m = next(m for m in raw["models"] if "extra_args" in m)
    return Model.model_validate({k: v for k, v in m.items()}), list(m["extra_args"])


@pytest.mark.parametrize("case, stack, mutate, key, fragment", SPELLINGS, ids=[c[0] for c in SPELLINGS])
def test_vllm_reads_each_spelling_as_the_flag_the_program_refuses(case, stack, mutate, key, fragment):
    _, extra = _argv(mutate, stack)
    flag = vllm_flags.parse(extra)[int(key.rsplit("[", 1)[1].rstrip("]"))]
    if flag.one_item:  # vLLM takes one item as one argument: it refuses it outright
        with pytest.raises(ValueError, match="unrecognized arguments"):
            parse_serve_args(["org/model", *extra], engine_args=False)
        return
    argv = ["org/model", *extra]
    if flag.option.dest == "config":
        return  # vLLM would open the file; that its dest is `config` is the point
    ns = parse_serve_args(argv, engine_args=False)
    default = vllm_parser().parse_args(["serve", "org/model"])
    assert getattr(ns, flag.option.dest) != getattr(default, flag.option.dest), case


@pytest.mark.parametrize("case, stack, mutate, key, fragment", PARSING, ids=[c[0] for c in PARSING])
def test_vllm_refuses_each_command_line_the_program_refuses(case, stack, mutate, key, fragment):
    _, extra = _argv(mutate, stack)
    with pytest.raises(ValueError):
        parse_serve_args(["org/model", *extra], engine_args=False)


def test_every_flag_the_program_generates_is_managed():
    """Derived from fleet/vllm_command.py: a model that makes it add every flag it knows."""
    m = Model(name="m", hf_id="org/model", revision="abc", tensor_parallel_size=2, pipeline_parallel_size=2,
              dtype="bfloat16", quantization="fp8", kv_cache_dtype="fp8", max_model_len=4096, max_num_seqs=8,
              max_num_batched_tokens=8192, enable_prefix_caching=False, trust_remote_code=True,
              speculative={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4},
              sampling={"temperature": 0.5}, drain_timeout_s=30)
    argv = vc.serve_args(m, port=8000, nodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500)
    generated = {f.option.dest for f in vllm_flags.parse(argv[1:])} | {"model"}
    assert generated - set(vllm_flags.MANAGED) == set()
    assert len(generated) >= 20


def test_every_variable_the_program_sets_is_managed():
    raw = raw_stack("prod")
    cfg = parse_config(raw, "prod")
    cpu = Model(name="c", hf_id="org/model", device="cpu")
    gpu = cfg.models[1]
    names = set(vc.replica_env(cfg, cpu, cpu_bind="0-3"))
    names |= set(vc.replica_env(cfg, gpu, nodes=2, nvlink=False, nccl_socket_ifname="eth0", host_ip="10.0.0.1"))
    names |= set(vc.replica_secret_env(cfg)) | {"VLLM_HOST_IP"}  # the pod's IP on Kubernetes (fleet/k8s/plan.py)
    assert names - set(vllm_env.MANAGED_ENV) == set()


def test_the_startup_combinations_are_vllms_own():
    from vllm.config import ParallelConfig

    ok = ParallelConfig(tensor_parallel_size=4, decode_context_parallel_size=2, distributed_executor_backend="mp")
    assert ok.decode_context_parallel_size == 2
    with pytest.raises(ValueError, match="divisible by dcp_size=3"):
        ParallelConfig(tensor_parallel_size=4, decode_context_parallel_size=3, distributed_executor_backend="mp")
    with pytest.raises(ValueError, match="enable_eplb"):
        ParallelConfig(enable_elastic_ep=True)
    with pytest.raises(ValueError, match="pipeline parallelism"):
        ParallelConfig(enable_elastic_ep=True, enable_eplb=True, pipeline_parallel_size=2,
                       distributed_executor_backend="mp")
    wide = ParallelConfig(prefill_context_parallel_size=2, distributed_executor_backend="mp")
    assert wide.world_size == 2, "vLLM starts a worker (a GPU) per prefill-context rank"


@pytest.mark.parametrize("kwargs, max_model_len, match", [
    ({"max_num_batched_tokens": 2048, "max_num_seqs": 64, "enable_chunked_prefill": False}, 16384, "smaller than max_model_len"),
    ({"max_num_batched_tokens": 8192, "max_num_seqs": 64, "max_num_active_seqs": 128}, 4096, "max_num_active_seqs"),
    ({"max_num_batched_tokens": 8192, "max_num_seqs": 64, "long_prefill_token_threshold": 8000}, 4096, "long_prefill"),
])
def test_the_scheduler_combinations_are_vllms_own(kwargs, max_model_len, match):
    from vllm.config import SchedulerConfig

    with pytest.raises(ValueError, match=match):
        SchedulerConfig(max_model_len=max_model_len, is_encoder_decoder=False, **kwargs)


def test_the_platform_rules_are_vllms_own():
    import inspect

    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms.cpu import CpuPlatform
    from vllm.platforms.interface import Platform, PlatformEnum

    def platform(kind):
        p = Platform()
        p._enum = kind
        return p

    assert not CpuPlatform().is_sleep_mode_available()
    available = {name for name, kind in (("cuda", PlatformEnum.CUDA), ("rocm", PlatformEnum.ROCM), ("xpu", PlatformEnum.XPU),
                                         ("cpu", PlatformEnum.CPU)) if platform(kind).is_sleep_mode_available()}
    assert available == set(vllm_flags.PLATFORM_ONLY[("enable_sleep_mode", True)])
    source = inspect.getsource(EngineArgs.create_engine_config)
    assert '"--kda-prefill-backend=flashkda is only available on CUDA."' in source
    assert '"--kda-prefill-backend=fused is only available on ROCm."' in source


def test_an_unknown_vllm_variable_is_what_vllm_itself_refuses(monkeypatch):
    from vllm.platforms.interface import Platform

    monkeypatch.setattr(os, "environ", {**os.environ, "VLLM_CPU_KVCACHE_SPAC": "4"})
    with pytest.raises(ValueError, match="Unknown vLLM environment variable"):
        Platform.validate_environ(hard_fail=True)
    assert "VLLM_CPU_KVCACHE_SPACE" in vllm_flags.table().env


# --- images ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref", [
    "nginx", "nginx:1.28.0-alpine", "localhost:5000/a/b:c", "[::1]:5000/x:1", "a__b/c-d--e.f:TAG_1",
    "registry.example.com/vllm/vllm-openai:v0.32.0@sha256:" + "0" * 64, "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
])
def test_well_formed_references_parse(ref):
    image_refs.parse_ref(ref)


@pytest.mark.parametrize("ref", ["", "Nginx", "nginx:", ":tag", "a/-b", "a//b", "nginx:" + "x" * 129, "a@sha256:" + "0" * 63,
                                 "a@md5", "a_/b", "-a"])
def test_malformed_references_do_not(ref):
    with pytest.raises(ValueError):
        image_refs.parse_ref(ref)


@pytest.mark.parametrize("ref, release", [
    ("vllm/vllm-openai:v0.17.1", (0, 17, 1)), ("vllm/vllm-openai:v0.9.0.post1", (0, 9, 0)),
    ("mirror.example.com:5000/vllm/vllm-openai:0.18", (0, 18, 0)), ("vllm/vllm-openai:latest", None),
    ("vllm/vllm-openai:nightly", None), ("vllm/vllm-openai@sha256:" + "0" * 64, None), ("team/vllm-otel:0.3", None),
])
def test_the_vllm_release_is_read_from_official_tags_only(ref, release):
    assert image_refs.vllm_release(ref) == release


def test_the_pinned_release_has_every_flag_of_the_version_table():
    pinned = tuple(int(x) for x in vllm_flags.VLLM_VERSION.split("."))
    for row in image_refs.FLAG_SINCE:
        assert row.flag in vllm_flags.table().options and pinned >= row.since
