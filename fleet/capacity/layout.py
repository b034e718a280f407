"""How one replica may be split over machines (Docker hosts or Kubernetes nodes): the one rule.

vLLM serves a replica across machines by pipeline stages: each machine gets whole stages, so a
tensor-parallel group never crosses a machine (its all-reduce every layer needs NVLink/PCIe, not
the network). A replica spans 1 machine, or n machines where n divides pipeline_parallel_size.
"""
from __future__ import annotations

from typing import Optional

from fleet.config.schema import Model


def machine_splits(model: Model) -> list[int]:
    """The numbers of machines one replica may span, fewest first."""
    pp = model.pipeline_parallel_size
    return [1] + [n for n in range(2, pp + 1) if pp % n == 0]


def machines_per_replica(model: Model, gpus_per_machine: int) -> Optional[int]:
    """The fewest machines of `gpus_per_machine` GPUs one replica fits on, or None."""
    need = model.gpus_per_replica
    return next((n for n in machine_splits(model) if need // n <= gpus_per_machine), None)
