"""The Grafana dashboard (files/grafana/dashboards/vllm-fleet.json) and its provisioning.

Every query is handed to `promtool check rules` as a recording rule, so a query that Prometheus
would reject fails here rather than as an empty panel; the series it reads are vLLM's own or
recorded by our rules (files/prometheus/alerts.yml.j2).
"""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from support.stacks import raw_stack, require_tool
from fleet.config.load import parse_config
from fleet.render.files import GRAFANA_DASHBOARD_DIR, alert_rules
from fleet.render.templates import FILES
from tests.support.grafana_queries import (
    DASHBOARD,
    dashboard_queries,
    load,
    panels,
    targets,
    vllm_exported_series,
    vllm_series_in,
)

PROVISIONING = FILES / "grafana" / "provisioning" / "dashboards.yml"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
GRID_COLUMNS = 24
# Our recording rules, `fleet:<what>:<how>`.
RECORDED = re.compile(r"fleet:[\w:]+")
# A shipped stack with load_balancer.policy prefix_affinity: it renders every recording rule.
AFFINITY_STACK = "prod"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load(DASHBOARD)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


def test_the_dashboard_is_the_grafana_11_vllm_fleet_dashboard(dashboard):
    assert dashboard["uid"] == "vllm-fleet"
    assert dashboard["title"] == "vLLM fleet"
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"


def test_every_panel_has_a_grid_position_inside_the_24_columns(dashboard):
    for panel in panels(dashboard):
        grid = panel.get("gridPos")
        assert grid and all(isinstance(grid.get(k), int) for k in "hwxy"), f"panel {panel['id']}: gridPos {grid}"
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= GRID_COLUMNS, f"panel {panel['id']}: {grid}"


def test_panels_do_not_overlap(dashboard):
    taken: dict[tuple[int, int], int] = {}
    for panel in panels(dashboard):
        g = panel["gridPos"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in taken, f"panels {taken[cell]} and {panel['id']} overlap at {cell}"
            taken[cell] = panel["id"]


def test_every_panel_and_query_reads_the_provisioned_prometheus(dashboard):
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, f"panel {panel['id']} {panel['title']!r}"
        assert panel["targets"], f"panel {panel['id']} {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"panel {panel['id']} target {target['refId']}"


def test_query_ref_ids_are_unique_within_a_panel(dashboard):
    for panel in panels(dashboard):
        ref_ids = [t["refId"] for t in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['id']}: {ref_ids}"


def test_the_model_variable_lists_the_models_of_the_vllm_job_with_all(dashboard):
    (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert model["type"] == "query" and model["datasource"] == DATASOURCE
    assert model["definition"] == 'label_values(up{job="vllm"}, model)'
    assert model["query"]["query"] == model["definition"]
    assert model["includeAll"] is True


def test_every_vllm_selector_is_filtered_by_the_model_variable(dashboard):
    for panel, target in targets(dashboard):
        for selector in re.findall(r'(?:vllm:\w+|up)\{[^}]*job="vllm"[^}]*\}|vllm:\w+\{[^}]*\}', target["expr"]):
            assert 'model=~"$model"' in selector, f"panel {panel['title']!r}: {selector}"


def test_every_recorded_series_is_filtered_by_the_model_variable(dashboard):
    for panel, target in targets(dashboard):
        for name in RECORDED.findall(target["expr"]):
            selector = re.search(re.escape(name) + r"(\{[^}]*\})?", target["expr"]).group(1) or ""
            assert 'model=~"$model"' in selector, f"panel {panel['title']!r}: {name}{selector}"


@pytest.fixture(scope="module")
def affinity_rules() -> dict:
    cfg = parse_config(raw_stack(AFFINITY_STACK), AFFINITY_STACK)
    assert cfg.load_balancer.policy == "prefix_affinity", f"{AFFINITY_STACK} no longer uses prefix_affinity"
    return yaml.safe_load(alert_rules(cfg))


def test_the_queries_read_only_series_our_rules_record(dashboard, affinity_rules):
    recorded = {rule["record"] for group in affinity_rules["groups"] for rule in group["rules"] if "record" in rule}
    unknown = {panel["title"]: sorted(set(RECORDED.findall(t["expr"])) - recorded)
               for panel, t in targets(dashboard) if set(RECORDED.findall(t["expr"])) - recorded}
    assert not unknown, f"series no rule records: {unknown}"


def test_the_spill_over_panel_draws_its_line_where_the_alert_fires(dashboard, affinity_rules):
    (alert,) = [r for g in affinity_rules["groups"] for r in g["rules"] if r.get("alert") == "VllmAffinitySpillOver"]
    (panel,) = [p for p in panels(dashboard) if p["title"] == "Spill-over: share of time passing conversations on"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    assert alert["expr"].strip().endswith(f"> {steps[-1]['value']}"), (alert["expr"], steps)
    share = alert["expr"].strip().rsplit(" > ", 1)[0]
    assert share in panel["targets"][0]["expr"].replace('{model=~"$model"}', ""), (share, panel["targets"][0]["expr"])


def test_every_query_is_valid_promql(promtool, tmp_path):
    dash = load(DASHBOARD)
    named = [(f"dashboard:panel_{panel['id']}_{target['refId']}", query)
             for (panel, target), query in zip(targets(dash), dashboard_queries(DASHBOARD))]
    assert named, "the dashboard has no queries"
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": name, "expr": q} for name, q in named]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", "dashboard.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool check rules exited {result.returncode}:\n{result.stdout}{result.stderr}"


def test_the_queries_read_only_series_that_vllm_exports(dashboard):
    exported = vllm_exported_series()
    unknown = {panel["title"]: sorted(vllm_series_in(t["expr"]) - exported)
               for panel, t in targets(dashboard) if vllm_series_in(t["expr"]) - exported}
    assert not unknown, f"series vLLM does not export: {unknown}"


def test_dashboard_queries_fill_in_every_grafana_variable():
    queries = dashboard_queries(DASHBOARD, {"model": "qwen"})
    assert queries and not [q for q in queries if "$" in q or "[[" in q]
    assert any('model=~"qwen"' in q for q in queries)


def test_the_provisioning_loads_the_dashboards_into_the_vllm_fleet_folder():
    (provider,) = yaml.safe_load(PROVISIONING.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "vLLM fleet"
    # The directory the deployment mounts the dashboard JSON into (fleet/render/files.py).
    assert provider["options"]["path"] == GRAFANA_DASHBOARD_DIR
