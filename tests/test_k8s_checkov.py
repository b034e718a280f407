"""checkov on the Kubernetes manifests the offline render writes: no finding but the written skips.

checkov pins `packaging==23.2`, which conflicts with Pulumi, so it lives in a venv of its own
(`.venv-checkov`, made by `make checkov-setup`). Without it the test skips locally and fails in CI.
"""
from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tools.offline_render import render_stack
from test_k8s_stack_graph import K8S_PASSPHRASES, K8S_STACKS

ROOT = Path(__file__).resolve().parent.parent
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = ROOT / "files/k8s/checkov-skips.yaml"


def checkov() -> Path:
    if CHECKOV.exists():
        return CHECKOV
    if os.environ.get("CI"):
        pytest.fail(f"{CHECKOV} is missing: `make checkov-setup` creates checkov's own venv")
    pytest.skip("checkov is not installed (`make checkov-setup` creates .venv-checkov)")


def skips() -> list[dict]:
    return yaml.safe_load(SKIPS.read_text())["skips"]


def skipped(finding: dict) -> dict | None:
    return next((s for s in skips() if finding["check_id"] in s["checks"]
                 and any(fnmatch.fnmatchcase(finding["resource"], pattern) for pattern in s["resources"])), None)


def findings(directory: Path) -> list[dict]:
    result = subprocess.run(
        [str(checkov()), "--directory", str(directory), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--quiet", "--compact"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: failed checks, reported below
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    out = []
    for report in reports:
        assert report.get("summary", {}).get("parsing_errors", 0) == 0, report["summary"]
        out += report.get("results", {}).get("failed_checks", [])
    return out


@pytest.fixture(scope="module", params=K8S_STACKS)
def rendered(request, tmp_path_factory) -> tuple[str, list[dict]]:
    stack = request.param
    out = tmp_path_factory.mktemp("render") / stack
    render_stack(stack, out, passphrase=K8S_PASSPHRASES[stack])
    return stack, findings(out / "k8s")


def test_every_skip_names_its_checks_resources_and_reason():
    for s in skips():
        assert s["checks"] and all(c.startswith(("CKV_K8S_", "CKV2_K8S_")) for c in s["checks"]), s
        assert s["resources"] and all(isinstance(p, str) for p in s["resources"]), s
        assert len(s.get("reason", "").split()) >= 15, f"{s['checks']}: give the reason in sentences"


def test_checkov_reports_no_failed_check_but_the_written_skips(rendered):
    stack, failed = rendered
    unexpected = sorted(f"{f['check_id']} {f['resource']} ({f.get('check_name', '')})" for f in failed if not skipped(f))
    assert not unexpected, f"{stack}: checkov findings without a skip in files/k8s/checkov-skips.yaml:\n" + "\n".join(unexpected)


def test_every_skip_is_still_needed(rendered):
    stack, failed = rendered
    used = {(f["check_id"], p) for f in failed for s in skips() if f["check_id"] in s["checks"]
            for p in s["resources"] if fnmatch.fnmatchcase(f["resource"], p)}
    stale = [f"{c} {p}" for s in skips() for c in s["checks"] for p in s["resources"] if (c, p) not in used]
    assert not stale, f"{stack}: skips that match no finding any more (remove them): {stale}"


def test_checkov_actually_ran_on_the_workloads(rendered):
    _, failed = rendered
    # The accepted findings name the vLLM StatefulSets: proof that checkov parsed the workloads.
    assert any(f["resource"].startswith("StatefulSet.vllm-prod.vllm-") for f in failed)
