"""The Pulumi CLI that `make up` / `preview` / `destroy` run: prints its path, installing it first if need be.

Order: a `pulumi` on PATH; else the project's own copy in `.pulumi/` (PULUMI_CLI_ROOT overrides
the folder); else that copy is installed, at the version of the pinned Pulumi SDK (requirements.txt),
with Pulumi's Automation API (`PulumiCommand.install`: Pulumi's official install script, which
downloads the release from get.pulumi.com). Nothing outside the folder is touched (no PATH edit).

Any failure (offline, a proxy, a failed script) ends in one error that says what is missing and
how to install it by hand; never a traceback. Exit codes: 0 with the path on stdout, 1 otherwise.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_root() -> Path:
    return Path(os.environ.get("PULUMI_CLI_ROOT") or ROOT / ".pulumi")


def pinned_version() -> str:
    from pulumi._version import version  # the SDK that requirements.txt pins

    return str(version)


def manual_install_hint(version: str, root: Path) -> str:
    return (f"install it by hand: `curl -fsSL https://get.pulumi.com | sh -s -- --version {version} "
            f"--install-root {root} --no-edit-path`, or any Pulumi CLI 3.x on PATH "
            "(https://www.pulumi.com/docs/install/), then re-run make")


def ensure_cli() -> str:
    """The path of a Pulumi CLI; installs the pinned one into cli_root() when none is found."""
    on_path = shutil.which("pulumi")
    if on_path:
        return on_path
    root = cli_root()
    version = pinned_version()
    from pulumi.automation import PulumiCommand  # imported late: the hint above needs no SDK
    from semver import VersionInfo

    print(f"the Pulumi CLI is not installed: installing Pulumi {version} into {root} (get.pulumi.com)",
          file=sys.stderr)
    try:
        cmd = PulumiCommand.install(root=str(root), version=VersionInfo.parse(version))
    except urllib.error.URLError as e:
        reason = getattr(e, "reason", e)
        raise SystemExit(f"error: the Pulumi CLI is not installed and could not be downloaded "
                         f"(get.pulumi.com: {reason}): {manual_install_hint(version, root)}") from None
    except subprocess.CalledProcessError as e:
        last = (e.output or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"error: the Pulumi CLI is not installed and its install script failed "
                         f"(exit {e.returncode}: {last[0]}): {manual_install_hint(version, root)}") from None
    except Exception as e:  # noqa: BLE001 - anything else (a disk error, an unusable binary): one message
        raise SystemExit(f"error: the Pulumi CLI is not installed and installing it failed "
                         f"({type(e).__name__}: {e}): {manual_install_hint(version, root)}") from None
    return cmd.command


if __name__ == "__main__":
    print(ensure_cli())
