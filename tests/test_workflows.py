"""The GitHub workflows (.github/): lint clean, and shaped the way docs/workflow.md says.

actionlint (with ShellCheck on every `run:` script) checks syntax, expressions, contexts, job
dependencies, untrusted input in scripts, and the inputs of the actions used. The structural tests
then check the promises: every pull request previews every stack with the policy pack enforced,
a push to main updates staging only, and prod changes only in an approved `production` job.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tools.mock_run import ROOT

GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
DOC = ROOT / "docs" / "workflow.md"
STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
PULUMI_ACTION = "pulumi/actions@"


def tool(name: str) -> str:
    """A linter from the test virtualenv (requirements-test.txt), or from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is missing: `make setup` installs it (requirements-test.txt)")
    pytest.skip(f"{name} is not installed (run `make setup`)")


def actionlint(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("actionlint"), "-no-color", "-shellcheck", tool("shellcheck")],
                          cwd=project, capture_output=True, text=True, timeout=120)


def copy_of_github(tmp_path: Path) -> Path:
    shutil.copytree(GITHUB, tmp_path / ".github")
    (tmp_path / ".git").mkdir()  # actionlint finds the project by its .git
    return tmp_path


def workflow(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def workflows() -> dict[str, dict]:
    return {p.name: workflow(p.name) for p in sorted(WORKFLOWS.glob("*.yml"))}


def steps(job: dict) -> list[dict]:
    return job.get("steps") or []


def pulumi_runs(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    for job_id, job in doc["jobs"].items():
        for step in steps(job):
            if str(step.get("uses", "")).startswith(PULUMI_ACTION):
                yield job_id, job, step


def matrix_values(job: dict, key: str) -> list[str]:
    matrix = (job.get("strategy") or {}).get("matrix") or {}
    return [*matrix.get(key, []), *(entry[key] for entry in matrix.get("include", []) if key in entry)]


def stacks_of(doc: dict, job: dict, step: dict) -> list[str]:
    """The stacks a Pulumi step may run on: a literal, the job's matrix, or the dispatch input."""
    name = str(step["with"]["stack-name"])
    if name == "${{ matrix.stack }}":
        return matrix_values(job, "stack")
    if name.startswith("${{ inputs.stack"):
        return doc["on"]["workflow_dispatch"]["inputs"]["stack"]["options"]
    assert "${{" not in name, f"stack-name {name!r}: use a literal, matrix.stack or inputs.stack"
    return [name]


def environment(job: dict) -> str:
    env = job.get("environment")
    return env.get("name") if isinstance(env, dict) else env or ""


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true" or str(value).startswith("${{")


# --- lint ---------------------------------------------------------------------------------------

def test_the_workflows_lint_clean_with_actionlint_and_shellcheck():
    result = actionlint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_inputs_given_to_each_action_exist_in_its_release_line(tmp_path):
    """actionlint knows the inputs of popular actions by major version (v6, not v6.0.2): lint a
    copy with every exact pin cut to its major version, so a misspelt input fails here too."""
    project = copy_of_github(tmp_path)
    for path in project.glob(".github/**/*.yml"):
        path.write_text(re.sub(r"(uses: [^.\s][^@\s]*@v\d+)(?:\.\d+)+", r"\1", path.read_text()))
    result = actionlint(project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_here_does_catch_a_misspelt_input_and_a_shell_bug(tmp_path):
    project = copy_of_github(tmp_path)
    wf = project / ".github" / "workflows" / "deploy-staging.yml"
    text = wf.read_text().replace("pulumi/actions@v7.0.0", "pulumi/actions@v7").replace("policyPacks:", "policyPack:", 1)
    wf.write_text(text + "      - run: cd $HOME/x\n")
    result = actionlint(project)
    assert result.returncode != 0
    assert '"policyPack" is not defined' in result.stdout and "SC2086" in result.stdout, result.stdout


def test_every_action_is_pinned_to_an_exact_release():
    for path in GITHUB.glob("**/*.yml"):
        for ref in re.findall(r"uses:\s*(\S+)", path.read_text()):
            if not ref.startswith("./"):
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+\.\d+\.\d+", ref), f"{path.name}: {ref} is not pinned to vX.Y.Z"


# --- pull requests ------------------------------------------------------------------------------

def test_pull_requests_preview_every_stack_with_the_policy_pack_and_comment_the_diff():
    doc = workflow("pull-request.yml")
    assert "pull_request" in doc["on"]
    previewed = []
    for _, job, step in pulumi_runs(doc):
        args = step["with"]
        assert args["command"] == "preview"
        assert args["policyPacks"] == "policy" and truthy(args["diff"]) and truthy(args["comment-on-pr"])
        previewed += stacks_of(doc, job, step)
    assert sorted(previewed) == STACKS


def test_pull_requests_never_change_a_stack():
    for name in ("pull-request.yml", "tests.yml"):
        assert {step["with"]["command"] for _, _, step in pulumi_runs(workflow(name))} <= {"preview"}


def test_pull_requests_run_the_fast_and_live_test_tiers():
    caller = workflow("pull-request.yml")["jobs"]["tests"]
    assert caller["uses"] == "./.github/workflows/tests.yml" and caller["with"]["live"] is True
    tests = workflow("tests.yml")
    assert "workflow_call" in tests["on"]
    (job,) = tests["jobs"].values()
    tiers = job["strategy"]["matrix"]["tier"]
    assert '"fast", "live"' in tiers and '"fast"' in tiers
    assert [s["run"] for s in steps(job) if "run" in s] == ['make "test-${{ matrix.tier }}"']


def test_pull_requests_render_base_and_head_diff_them_and_publish_the_diff():
    job = workflow("pull-request.yml")["jobs"]["render-diff"]
    refs = {s["with"].get("path"): s["with"].get("ref") for s in steps(job) if str(s.get("uses", "")).startswith("actions/checkout@")}
    assert refs == {"head": None, "base": "${{ github.event.pull_request.base.sha }}"}
    script = "\n".join(s.get("run", "") for s in steps(job))
    assert 'make -C "$tree" render STACK="$stack"' in script and "stacks/Pulumi.*.yaml" in script
    assert "diff -ru base/build head/build > render.diff" in script
    uses = [str(s.get("uses", "")) for s in steps(job)]
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    assert any(u.startswith("actions/github-script@") for u in uses)
    assert job["permissions"]["pull-requests"] == "write"


def test_remote_previews_use_their_stacks_preview_environment_and_skip_without_credentials():
    job = workflow("pull-request.yml")["jobs"]["preview-remote"]
    envs = dict(zip(matrix_values(job, "stack"), matrix_values(job, "environment")))
    assert envs == {"staging": "staging-preview", "prod": "production-preview", "prod-k8s": "production-k8s-preview"}
    assert environment(job) == "${{ matrix.environment }}"
    (_, _, step), = [r for r in pulumi_runs({"jobs": {"preview-remote": job}})]
    assert step["if"] == "steps.creds.outputs.ready == 'true'"


# --- staging and prod ---------------------------------------------------------------------------

def test_a_push_to_main_tests_then_updates_staging_and_nothing_else():
    doc = workflow("deploy-staging.yml")
    assert doc["on"] == {"push": {"branches": ["main"]}}
    ((job_id, job, step),) = list(pulumi_runs(doc))
    assert step["with"]["command"] == "up" and stacks_of(doc, job, step) == ["staging"]
    assert environment(job) == "staging" and job["needs"] == "tests"
    assert doc["jobs"]["tests"]["uses"] == "./.github/workflows/tests.yml"


PROD_STACKS = [s for s in STACKS if s == "prod" or s.startswith("prod-")]
PRODUCTION_ENVIRONMENT = "${{ inputs.stack == 'prod-k8s' && 'production-k8s' || 'production' }}"


def test_prod_is_deployed_from_a_dispatch_or_a_release_after_a_preview_and_an_approval():
    doc = workflow("deploy-prod.yml")
    assert set(doc["on"]) == {"workflow_dispatch", "release"}
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["ref"]["required"] is True
    assert sorted(inputs["stack"]["options"]) == PROD_STACKS and inputs["stack"]["default"] == "prod"
    runs = {(job_id, step["with"]["command"]): stacks_of(doc, job, step) for job_id, job, step in pulumi_runs(doc)}
    assert runs == {("preview", "preview"): inputs["stack"]["options"], ("up", "up"): inputs["stack"]["options"]}
    assert all(step["with"]["stack-name"] == "${{ inputs.stack || 'prod' }}" for _, _, step in pulumi_runs(doc))
    assert doc["jobs"]["up"]["needs"] == "preview"
    assert environment(doc["jobs"]["up"]) == PRODUCTION_ENVIRONMENT
    assert doc["jobs"]["up"]["steps"][0]["with"]["ref"] == "${{ needs.preview.outputs.sha }}"


def test_prod_only_gets_a_commit_that_staging_already_runs():
    job = workflow("deploy-prod.yml")["jobs"]["preview"]
    script = next(s["run"] for s in steps(job) if s.get("id") == "commit")
    assert "deployments?environment=staging&sha=$sha" in script and "exit 1" in script
    assert job["permissions"]["deployments"] == "read"


def test_only_an_approved_production_job_updates_a_prod_stack():
    for name, doc in workflows().items():
        for job_id, job, step in pulumi_runs(doc):
            if step["with"]["command"] in ("up", "destroy", "refresh") and set(stacks_of(doc, job, step)) & set(PROD_STACKS):
                assert (name, environment(job)) == ("deploy-prod.yml", PRODUCTION_ENVIRONMENT), f"{name}:{job_id}"


def test_deployments_queue_instead_of_cancelling_each_other():
    for name in ("deploy-staging.yml", "deploy-prod.yml"):
        assert workflow(name)["concurrency"]["cancel-in-progress"] is False


# --- every Pulumi run ---------------------------------------------------------------------------

def test_every_pulumi_run_enforces_the_policy_pack_with_the_cli_of_the_sdk_version():
    sdk = re.search(r"^pulumi==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    runs = [step for doc in workflows().values() for _, _, step in pulumi_runs(doc)]
    assert runs
    for step in runs:
        assert step["with"]["policyPacks"] == "policy"
        assert step["with"]["pulumi-version"] == sdk
    assert (ROOT / "policy" / "PulumiPolicy.yaml").exists()


def test_every_job_that_runs_pulumi_prepares_the_virtualenvs_first():
    for name, doc in workflows().items():
        for job_id, job, step in pulumi_runs(doc):
            uses = [s.get("uses") for s in steps(job)]
            assert "./.github/actions/pulumi-setup" in uses, f"{name}:{job_id}"
            assert uses.index("./.github/actions/pulumi-setup") < uses.index(step["uses"])


def test_workflows_start_from_read_only_permissions():
    for name, doc in workflows().items():
        assert doc["permissions"] == {"contents": "read"}, name


def test_every_secret_variable_and_environment_is_documented():
    doc = DOC.read_text()
    text = "\n".join(p.read_text() for p in GITHUB.glob("**/*.yml"))
    names = set(re.findall(r"\b(?:secrets|vars)\.([A-Z][A-Z0-9_]+)", text)) - {"GITHUB_TOKEN"}
    environments = {"staging", "production", "production-k8s", "staging-preview", "production-preview",
                    "production-k8s-preview"}
    assert names and all(f"`{n}`" in doc for n in names), sorted(n for n in names if f"`{n}`" not in doc)
    assert all(f"`{e}`" in doc for e in environments)
