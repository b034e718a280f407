"""The Prometheus alert rules (files/prometheus/alerts.yml.j2) pass promtool and behave as tested.

`promtool check rules` checks the rendered file as Prometheus will load it; `promtool test rules`
runs tests/promtool/alerts_test.yml against it, which pins when each alert fires and with which
labels and annotations.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support.stacks import STACKS, raw_stack, require_tool
from fleet.config.load import parse_config
from fleet.render.files import AFFINITY_MIN_BOUND, affinity_bound, alert_rules
from fleet.render.templates import TemplateError, render
from tests.support.grafana_queries import vllm_exported_series, vllm_series_in

TEMPLATE = "prometheus/alerts.yml.j2"
UNIT_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yml"
# The values tests/promtool/alerts_test.yml is written against.
UNIT_TEST_VALUES = {
    "replica_down_for": "1m",
    "queue_alert_threshold": 32,
    "ttft_p99_alert_s": 5.0,
    "gpu_alerts": True,
    "nginx_alerts": True,
    # load_balancer.policy prefix_affinity, with two models' bounds
    "affinity_bounds": [{"model": "qwen", "bound": 4}, {"model": "llama", "bound": 8}],
    "affinity_load_factor": 1.25,
    "affinity_min_bound": AFFINITY_MIN_BOUND,
    "prefix_cache_hit_alert": 0.2,
}
ALWAYS = {"vllm-replicas"}
AFFINITY_GROUP = "prefix-affinity"


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def rules(**overrides) -> str:
    return render(TEMPLATE, **{**UNIT_TEST_VALUES, **overrides})


def alerts(text: str) -> dict[str, dict]:
    return {rule["alert"]: rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "alert" in rule}


def records(text: str) -> list[dict]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"] if "record" in rule]


def group_names(text: str) -> set[str]:
    return {group["name"] for group in yaml.safe_load(text)["groups"]}


def stack_config(stack: str, **load_balancer):
    raw = raw_stack(stack)
    raw["load_balancer"] = {**raw.get("load_balancer", {}), **load_balancer}
    return parse_config(raw, stack)


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"`{' '.join(result.args)}` exited {result.returncode}:\n{result.stdout}{result.stderr}"


def check_rules(promtool: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "alerts.yml").write_text(text)
    return promtool_run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path)


def test_the_rendered_rules_pass_promtool_check_rules(promtool, tmp_path):
    result = check_rules(promtool, rules(), tmp_path)
    assert result.returncode == 0, explain(result)


def test_the_alerts_fire_exactly_as_the_promtool_unit_tests_expect(promtool, tmp_path):
    (tmp_path / "alerts.yml").write_text(rules())
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = promtool_run(promtool, "test", "rules", UNIT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, explain(result)


@pytest.mark.parametrize("gpu_alerts", [True, False], ids=["gpu-on", "gpu-off"])
@pytest.mark.parametrize("nginx_alerts", [True, False], ids=["nginx-on", "nginx-off"])
def test_the_gpu_and_nginx_groups_come_and_go_with_their_switches(promtool, tmp_path, gpu_alerts, nginx_alerts):
    text = rules(gpu_alerts=gpu_alerts, nginx_alerts=nginx_alerts)
    result = check_rules(promtool, text, tmp_path)
    assert result.returncode == 0, explain(result)
    groups = group_names(text) - {AFFINITY_GROUP}
    assert groups == ALWAYS | ({"gpu"} if gpu_alerts else set()) | ({"nginx"} if nginx_alerts else set())


@pytest.mark.parametrize("stack", STACKS)
def test_each_shipped_stack_records_the_affinity_load_of_every_model_over_its_own_bound(promtool, tmp_path, stack):
    cfg = stack_config(stack)
    assert cfg.load_balancer.policy == "prefix_affinity", f"{stack} no longer uses prefix_affinity: test another stack"
    text = alert_rules(cfg)
    result = check_rules(promtool, text, tmp_path)
    assert result.returncode == 0, explain(result)
    load = {rule["labels"]["model"]: rule["expr"] for rule in records(text) if rule["record"] == "fleet:affinity_load:ratio"}
    assert load.keys() == {m.name for m in cfg.models}
    for m in cfg.models:
        assert load[m.name] == f'fleet:requests_in_flight:sum{{model="{m.name}"}} / {affinity_bound(cfg, m)}', m.name
    rendered = alerts(text)
    assert {"VllmPrefixCacheHitRateLow", "VllmAffinitySpillOver"} <= set(rendered)
    assert f"< {cfg.monitoring.prefix_cache_hit_alert}\n" in rendered["VllmPrefixCacheHitRateLow"]["expr"]


@pytest.mark.parametrize("policy", ["least_conn", "round_robin", "session_affinity"])
def test_without_prefix_affinity_there_is_no_bound_and_no_affinity_group(promtool, tmp_path, policy):
    text = alert_rules(stack_config("prod", policy=policy))
    result = check_rules(promtool, text, tmp_path)
    assert result.returncode == 0, explain(result)
    assert AFFINITY_GROUP not in group_names(text)
    assert not records(text)


def test_a_zero_hit_rate_threshold_drops_only_the_hit_rate_alert(promtool, tmp_path):
    text = rules(prefix_cache_hit_alert=0)
    result = check_rules(promtool, text, tmp_path)
    assert result.returncode == 0, explain(result)
    assert "VllmPrefixCacheHitRateLow" not in alerts(text)
    assert "VllmAffinitySpillOver" in alerts(text)
    assert {r["record"] for r in records(text)} == {"fleet:requests_in_flight:sum", "fleet:affinity_share:ratio",
                                                    "fleet:affinity_load:ratio", "fleet:affinity_spilling:bool",
                                                    "fleet:prefix_cache_hit:ratio_rate5m"}


def test_every_alert_has_a_promtool_unit_test_where_it_fires():
    tested = yaml.safe_load(UNIT_TESTS.read_text())
    fired = {case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    untested = sorted(set(alerts(rules())) - fired)
    assert not untested, f"alerts without a firing case in tests/promtool/{UNIT_TESTS.name}: {untested}"


def test_the_unit_tests_only_name_alerts_that_exist():
    tested = yaml.safe_load(UNIT_TESTS.read_text())
    named = {case["alertname"] for test in tested["tests"] for case in test.get("alert_rule_test", [])}
    assert named <= set(alerts(rules())), f"unknown alerts in the unit tests: {sorted(named - set(alerts(rules())))}"


@pytest.mark.parametrize("name", sorted(alerts(rules())))
def test_every_alert_has_a_severity_and_summary_description_runbook(name):
    rule = alerts(rules())[name]
    assert rule["labels"]["severity"] in {"warning", "critical"}, name
    assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
    assert all(text.strip() for text in rule["annotations"].values()), name


def test_the_alerts_and_recording_rules_read_only_series_that_vllm_exports():
    exported = vllm_exported_series()
    named = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in [*alerts(rules()).values(), *records(rules())]]
    unknown = {name: sorted(vllm_series_in(expr) - exported) for name, expr in named if vllm_series_in(expr) - exported}
    assert not unknown, f"series vLLM does not export: {unknown}"


def test_the_stack_values_reach_the_rules():
    rendered = alerts(rules(replica_down_for="3m", queue_alert_threshold=7, ttft_p99_alert_s=2.5,
                            prefix_cache_hit_alert=0.35))
    assert rendered["VllmReplicaDown"]["for"] == "3m"
    assert "3m" in rendered["VllmReplicaDown"]["annotations"]["description"]
    assert rendered["VllmRequestBacklog"]["expr"].endswith("> 7")
    assert rendered["VllmSlowFirstToken"]["expr"].endswith("> 2.5")
    assert "< 0.35\n" in rendered["VllmPrefixCacheHitRateLow"]["expr"]
    assert "less than 35% of the prompt tokens" in rendered["VllmPrefixCacheHitRateLow"]["annotations"]["description"]


def test_the_rendered_file_says_it_is_managed_by_vllm_fleet():
    assert rules().startswith("# managed by vllm-fleet")


@pytest.mark.parametrize("missing", sorted(UNIT_TEST_VALUES))
def test_every_value_is_required(missing):
    values = {k: v for k, v in UNIT_TEST_VALUES.items() if k != missing}
    with pytest.raises(TemplateError, match=missing):
        render(TEMPLATE, **values)
