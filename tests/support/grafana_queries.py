"""The PromQL behind the vLLM fleet dashboard, as Prometheus will receive it.

Grafana fills in its variables (`$model`, `$__rate_interval`, ...) before it sends a query; these
helpers do the same with fixed values, so the queries can go to `promtool` (do they parse) or to a
running Prometheus (do they return data). Also: the series vLLM exports, read from its source, so
tests can check that the dashboard and the alert rules only ask for series that exist.
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "files" / "grafana" / "dashboards" / "vllm-fleet.json"

# What Grafana would substitute with "All" models selected and a 15s scrape interval:
# `$__rate_interval` is at least four scrape intervals.
GRAFANA_VARIABLES: Mapping[str, str] = {
    "model": ".*",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
}

# `$name`, `${name}`, `${name:format}` and the deprecated `[[name]]`.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load(path: str | Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every Prometheus query of the dashboard, variables left as written."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield panel, target


def substitute(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """`expr` with Grafana's variables filled in; a variable without a value is an error."""
    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in variables:
            raise KeyError(f"Grafana variable ${name} has no value to substitute in: {expr}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def dashboard_queries(path: str | Path = DASHBOARD, variables: Mapping[str, str] | None = None) -> list[str]:
    """Every panel query of the dashboard at `path`, with Grafana's variables substituted.

    `variables` overrides single values of GRAFANA_VARIABLES, e.g. `{"model": "qwen"}`.
    """
    values = {**GRAFANA_VARIABLES, **(variables or {})}
    return [substitute(target["expr"], values) for _, target in targets(load(path))]


def vllm_exported_series() -> frozenset[str]:
    """The series names vLLM's Prometheus stat logger registers, read from the installed source.

    prometheus_client appends `_total` to counters and exposes histograms as `_bucket`, `_sum`
    and `_count`, so those are the names a query has to use.
    """
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it (slow)
    if spec is None or spec.origin is None:
        raise RuntimeError("vllm is not installed in this environment")
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    suffixes = {"gauge": ("",), "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    found = re.findall(r'_(gauge|counter|histogram)_cls\(\s*name="(vllm:\w+)"', source)
    if not found:
        raise RuntimeError(f"no vLLM metric definitions found in {spec.origin}: has the logger moved?")
    return frozenset(name + suffix for kind, name in found for suffix in suffixes[kind])


def vllm_series_in(expr: str) -> set[str]:
    """The `vllm:` series a PromQL expression reads."""
    return set(re.findall(r"vllm:\w+", expr))
