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


def checkov_report(directory: Path) -> tuple[int, list[dict], list[dict]]:
    """checkov as `make checkov` runs it (no --quiet: the JSON then lists the skipped checks too):
    its exit code, failed checks and skipped checks."""
    result = subprocess.run(
        [str(checkov()), "--directory", str(directory), "--framework", "kubernetes", "--skip-download",
         "--output", "json", "--compact"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: failed checks, reported below
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed, skipped_ = [], []
    for report in reports:
        assert report.get("summary", {}).get("parsing_errors", 0) == 0, report["summary"]
        failed += report.get("results", {}).get("failed_checks", [])
        skipped_ += report.get("results", {}).get("skipped_checks", [])
    return result.returncode, failed, skipped_


def without_skip_annotations(src: Path, dst: Path) -> Path:
    """The rendered manifests with checkov's skip annotations taken out: what checkov finds then."""
    for path in src.rglob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for d in docs:
            notes = d.get("metadata", {}).get("annotations", {})
            for key in [k for k in notes if k.startswith("checkov.io/skip")]:
                del notes[key]
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump_all(docs))
    return dst


@pytest.fixture(scope="module", params=K8S_STACKS)
def rendered(request, tmp_path_factory) -> tuple[str, int, list[dict], list[dict]]:
    stack = request.param
    out = tmp_path_factory.mktemp("render") / stack
    render_stack(stack, out, passphrase=K8S_PASSPHRASES[stack])
    _, unskipped, _ = checkov_report(without_skip_annotations(out / "k8s", out / "unannotated"))
    return (stack, *checkov_report(out / "k8s"), unskipped)


def test_every_skip_names_its_checks_resources_and_reason():
    for s in skips():
        assert s["checks"] and all(c.startswith(("CKV_K8S_", "CKV2_K8S_")) for c in s["checks"]), s
        assert s["resources"] and all(isinstance(p, str) for p in s["resources"]), s
        assert len(s.get("reason", "").split()) >= 15, f"{s['checks']}: give the reason in sentences"


def test_checkov_itself_passes_the_rendered_objects(rendered):
    """The reviewed skips travel as checkov's own annotations on the objects, so checkov as anyone
    runs it (`make checkov`, a user's CI, a scan of the cluster) reports no failed check."""
    stack, code, failed, _, _ = rendered
    unexpected = sorted(f"{f['check_id']} {f['resource']} ({f.get('check_name', '')})" for f in failed)
    assert not unexpected and code == 0, f"{stack}: checkov findings not in files/k8s/checkov-skips.yaml:\n" + "\n".join(unexpected)


def test_checkov_skips_exactly_the_written_list(rendered):
    stack, _, _, skipped_checks, unskipped = rendered
    for f in skipped_checks:
        assert skipped(f), f"{stack}: {f['check_id']} skipped on {f['resource']}, which the list does not name"
    # Without the annotations, checkov fails exactly what they skip.
    assert {(f["check_id"], f["resource"]) for f in unskipped} == {(f["check_id"], f["resource"]) for f in skipped_checks}
    used = {(f["check_id"], p) for f in unskipped for s in skips() if f["check_id"] in s["checks"]
            for p in s["resources"] if fnmatch.fnmatchcase(f["resource"], p)}
    stale = [f"{c} {p}" for s in skips() for c in s["checks"] for p in s["resources"] if (c, p) not in used]
    assert not stale, f"{stack}: skips that match no finding any more (remove them): {stale}"


def test_checkov_actually_ran_on_the_workloads(rendered):
    _, _, _, skipped_checks, _ = rendered
    # The accepted findings name the vLLM StatefulSets: proof that checkov parsed the workloads.
    assert any(f["resource"].startswith("StatefulSet.vllm-prod.vllm-") for f in skipped_checks)
