"""The GPU models a host may declare, with the facts placement and planning need."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    memory_gib: float
    compute_capability: float  # NVIDIA SM version: 8.0 Ampere, 8.9 Ada, 9.0 Hopper, 10.0 Blackwell

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability >= 8.0

    @property
    def supports_fp8(self) -> bool:
        return self.compute_capability >= 8.9


GPU_MODELS: dict[str, GpuModel] = {
    "T4": GpuModel(16, 7.5),
    "V100-32GB": GpuModel(32, 7.0),
    "A10G": GpuModel(24, 8.6),
    "A100-40GB": GpuModel(40, 8.0),
    "A100-80GB": GpuModel(80, 8.0),
    "L4": GpuModel(24, 8.9),
    "L40S": GpuModel(48, 8.9),
    "RTX-4090": GpuModel(24, 8.9),
    "H100-80GB": GpuModel(80, 9.0),
    "H200-141GB": GpuModel(141, 9.0),
    "B200-180GB": GpuModel(180, 10.0),
}
