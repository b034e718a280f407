"""The GPU models a host may declare, with the facts placement and planning need."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    memory_gib: float
    compute_capability: float  # NVIDIA SM version: 8.0 Ampere, 8.9 Ada, 9.0 Hopper, 10.0 Blackwell
    # What CUDA reports as the card's total memory (torch.cuda.mem_get_info), the amount vLLM
    # multiplies by gpu_memory_utilization: the driver and ECC keep the rest. H100-80GB was
    # measured (H100 80GB HBM3, 85,017,493,504 bytes); the others are the "total capacity"
    # PyTorch reports on those cards, rounded down.
    cuda_total_gib: float = 0.0

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability >= 8.0

    @property
    def supports_fp8(self) -> bool:
        return self.compute_capability >= 8.9


GPU_MODELS: dict[str, GpuModel] = {
    "T4": GpuModel(16, 7.5, 14.7),
    "V100-32GB": GpuModel(32, 7.0, 31.7),
    "A10G": GpuModel(24, 8.6, 22.0),
    "A100-40GB": GpuModel(40, 8.0, 39.4),
    "A100-80GB": GpuModel(80, 8.0, 79.1),
    "L4": GpuModel(24, 8.9, 22.0),
    "L40S": GpuModel(48, 8.9, 44.4),
    "RTX-4090": GpuModel(24, 8.9, 23.5),
    "H100-80GB": GpuModel(80, 9.0, 79.178),
    "H200-141GB": GpuModel(141, 9.0, 139.8),
    "B200-180GB": GpuModel(180, 10.0, 178.3),
}
