"""The layout itself: layers import only downward, no import cycle, no project import hidden in a
function, and every placement decision made once by its target and read by everything else.

Layers, bottom-up (a module may import its own layer and the ones below):
  fleet.config  <  fleet.capacity, fleet.render, fleet.ports, fleet.vllm_command, fleet.rollout
  <  fleet.docker, fleet.k8s  <  components  <  __main__ ;  tools (CLIs, mock runner) on top,
never imported by the program.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fleet.config.errors import ConfigError
from fleet.config.load import parse_config
from fleet.docker import plan as docker_plan
from fleet.docker.plan import build_plan
from fleet.k8s import plan as k8s_plan
from fleet.k8s.plan import build_k8s_plan
from support.stacks import raw_stack
from tools import plan_report
from tools.mock_run import read_stack_file, run_program, stack_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PASSPHRASE = "vllm-fleet-example-only"  # the shipped prod stacks' fake secrets
PACKAGES = ("fleet", "components", "tools")
LAYER = {  # module prefix -> rank; a module may import modules of its rank or lower
    "fleet.config": 0,
    "fleet.capacity": 1, "fleet.render": 1, "fleet.ports": 1, "fleet.vllm_command": 1, "fleet.rollout": 1,
    "fleet.docker": 2, "fleet.k8s": 2,
    "components": 3,
    "__main__": 4,
    "tools": 5,
}
# Targets are siblings: neither may import the other.
SIBLINGS = [("fleet.docker", "fleet.k8s"), ("components.docker", "components.k8s")]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "__main__.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imported(node: ast.AST, current: str) -> list[str]:
    """Project modules an import statement names (`from fleet.x import y` counts fleet.x.y when
    that is a module, else fleet.x)."""
    mods = project_modules()
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names]
    return [n for n in names if n.split(".")[0] in PACKAGES and n != current]


def imports_of(path: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """(project modules imported at module level, [(line, module)] imported inside a function or class)."""
    tree = ast.parse(path.read_text())
    current = module_name(path)
    top, nested = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top += imported(node, current)
    for outer in ast.walk(tree):
        if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for node in ast.walk(outer):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    nested += [(node.lineno, m) for m in imported(node, current)]
    return top, nested


def rank(module: str) -> int:
    best = max((p for p in LAYER if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYER"
    return LAYER[best]


def test_no_project_import_is_hidden_in_a_function():
    hidden = [f"{path.relative_to(ROOT)}:{line} imports {mod}"
              for path in project_modules().values() for line, mod in imports_of(path)[1]]
    assert not hidden, hidden


def test_every_module_imports_only_its_own_layer_and_below():
    upward = []
    for name, path in project_modules().items():
        for dep in imports_of(path)[0]:
            if rank(dep) > rank(name):
                upward.append(f"{name} imports {dep}")
            for a, b in SIBLINGS:
                if (name.startswith(a) and dep.startswith(b)) or (name.startswith(b) and dep.startswith(a)):
                    upward.append(f"{name} imports its sibling target {dep}")
    assert not upward, upward


def test_there_is_no_import_cycle():
    graph = {name: [d for d in imports_of(path)[0]] for name, path in project_modules().items()}
    for name in graph:  # a package's __init__ counts as imported with any of its modules
        graph[name] = [d for d in graph[name] if d in graph]
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


# --- one owner per decision: where replicas run ------------------------------------------------

LLAMA_70B = {"name": "llama-70b", "hf_id": "meta-llama/Llama-3.3-70B-Instruct", "replicas": 1,
             "tensor_parallel_size": 4, "max_model_len": 8192}


def k8s_config(dtype: str):
    raw = raw_stack("prod-k8s")
    raw["kubernetes"]["node_pools"] = [
        {"name": "t4", "gpus_per_node": 8, "gpu_model": "T4"},
        {"name": "h100", "gpus_per_node": 8, "gpu_model": "H100-80GB"},
    ]
    raw["kubernetes"]["autoscaling"] = []
    raw["models"] = [{**LLAMA_70B, "dtype": dtype}]
    return parse_config(raw, "prod-k8s")


def docker_config(dtype: str):
    raw = raw_stack("prod")
    edge = next(h for h in raw["hosts"] if not h.get("gpus"))
    raw["hosts"] = [
        {"name": "t4-host", "docker_host": "ssh://ops@10.0.0.21", "address": "10.0.0.21", "gpus": 8, "gpu_model": "T4"},
        {"name": "h100-host", "docker_host": "ssh://ops@10.0.0.22", "address": "10.0.0.22", "gpus": 8,
         "gpu_model": "H100-80GB"},
        edge,
    ]
    raw["models"] = [{**LLAMA_70B, "dtype": dtype, "replicas": 2}]
    return parse_config(raw, "prod")


@pytest.mark.parametrize("dtype, why", [
    ("bfloat16", "T4 (Turing) has no bfloat16"),
    ("float16", "70B at fp16 over 4 x 16 GB does not fit; on 4 x H100 it does"),
])
def test_kubernetes_places_a_model_on_the_pool_that_can_run_it_and_the_planner_sizes_that_pool(dtype, why):
    cfg = k8s_config(dtype)
    plan = build_k8s_plan(cfg)
    (w,) = plan.workloads
    assert w.pool.name == "h100", why
    assert set(plan.capacity.plans[0]) == {"H100-80GB"}
    assert plan.capacity.devices.replicas == {"llama-70b": [("llama-70b-0", "H100-80GB")]}
    placement = "\n".join(plan_report.placement_lines(plan))
    assert "h100" in placement and "t4" not in placement


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_docker_places_a_model_on_the_hosts_that_can_run_it_and_the_planner_sizes_those(dtype):
    cfg = docker_config(dtype)
    plan = build_plan(cfg)
    assert [p.leader.host for p in plan.placements] == ["h100-host", "h100-host"]
    assert set(plan.capacity.plans[0]) == {"H100-80GB"}
    assert "t4-host" not in "".join(line for line in plan_report.placement_lines(plan) if "llama" in line)


def test_a_model_no_pool_can_hold_is_refused_once_with_the_pool_the_deployer_would_use():
    cfg = k8s_config("float16")
    cfg.kubernetes.node_pools.pop()  # only T4 left: fp16 runs there, the weights do not fit
    with pytest.raises(ConfigError) as caught:
        build_k8s_plan(cfg)
    assert caught.value.key == "models[0].tensor_parallel_size"
    assert "does not fit on 4 x T4" in str(caught.value)


@pytest.mark.parametrize("stack, module, function", [
    ("prod", docker_plan, "place"),
    ("prod-k8s", k8s_plan, "choose_pool"),
])
def test_placement_is_computed_once_per_run(monkeypatch, stack, module, function):
    calls = []
    original = getattr(module, function)
    monkeypatch.setattr(module, function, lambda *a, **k: calls.append(a) or original(*a, **k))
    config, secret_keys, _ = stack_config(read_stack_file(stack), EXAMPLE_PASSPHRASE)
    run = run_program(stack, config, secret_keys)
    per_run = 1 if function == "place" else len(parse_config(raw_stack(stack), stack).models)
    assert len(calls) == per_run, f"{function} ran {len(calls)} times for one `pulumi up` of {stack}"
    assert run.resources
