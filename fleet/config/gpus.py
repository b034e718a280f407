"""The GPU models a host or node pool may declare, with the facts placement and planning need."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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

# Least compute capability of vLLM's kernels per quantization (get_min_capability in vLLM 0.32;
# the Marlin kernels need Ampere). fp8 and bfloat16 have their own properties above.
MIN_CAPABILITY = {"awq": 7.5, "awq_marlin": 8.0, "gptq": 6.0, "gptq_marlin": 8.0, "compressed-tensors": 7.0}


def lacks(gpu_name: str, *, dtype: str, quantization: Optional[str]) -> Optional[str]:
    """The model key (`quantization` or `dtype`) that GPUs of `gpu_name` cannot run, or None.

    The one rule every chooser of hosts or node pools, and every check of an inventory, applies."""
    gpu = GPU_MODELS[gpu_name]
    if quantization == "fp8" and not gpu.supports_fp8:
        return "quantization"
    if quantization in MIN_CAPABILITY and gpu.compute_capability < MIN_CAPABILITY[quantization]:
        return "quantization"
    if dtype == "bfloat16" and not gpu.supports_bf16:
        return "dtype"
    return None
