"""The one error type a stack's configuration can raise.

It subclasses ``pulumi.RunError`` so that `pulumi preview`/`pulumi up` print only the message:
no Python traceback, and no resource has been registered when it is raised.
"""
from __future__ import annotations

from typing import Any

import pulumi

from fleet.config.secrets import redact

PROJECT = "vllm-fleet"


def show(value: Any) -> str:
    """A short, single-line rendering of a config value for an error message."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class ConfigError(pulumi.RunError):
    """One clear configuration error: which key, what is wrong, what is allowed, how to fix it."""

    def __init__(self, key: str, value: Any, problem: str, allowed: str, fix: str) -> None:
        self.key, self.value, self.problem, self.allowed, self.fix = key, value, problem, allowed, fix
        # Every message goes through the one redaction path: a token pasted into any key is never printed.
        super().__init__(redact(
            f"invalid stack config `{PROJECT}:{key}` = {show(value)}: {problem}. "
            f"Allowed: {allowed}. Fix: {fix}."
        ))
