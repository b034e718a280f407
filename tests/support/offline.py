"""An autouse fixture for tests of the capacity planner: architectures come from the repository's
cache or the stack, never from the Hugging Face hub. A test module binds it to a name of its own
(`never_fetch = offline.never_fetch`): pytest finds fixtures in the module's namespace."""
from __future__ import annotations

import pytest

from fleet.capacity import architecture


@pytest.fixture(autouse=True)
def never_fetch(monkeypatch):
    """No test reaches the Hugging Face hub."""
    monkeypatch.setenv("VLLM_FLEET_OFFLINE", "1")
    architecture.fetch_config.cache_clear()
    yield
    architecture.fetch_config.cache_clear()
