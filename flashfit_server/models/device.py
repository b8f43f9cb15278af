"""Which device the models run on, at which precision, and how much GPU memory they hold.

DEVICE=auto takes CUDA when torch sees a GPU, else the CPU; DEVICE=cuda on a host (or in a
container) without a visible GPU is a startup error, never a silent fall back to the CPU.
PRECISION=auto means fp16 on CUDA (kept only where it passes the tolerance check in
`models/precision.py`) and fp32 on the CPU; the CPU always runs fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16")


class DeviceUnavailable(RuntimeError):
    """DEVICE asks for hardware this process cannot see; the message says what to check."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # cpu | cuda
    precision: str  # fp32 | fp16 (wanted; a model that fails the tolerance check runs fp32)
    max_batch_size: int


def _torch_sees_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_device(
    requested: str,
    precision: str,
    batch_sizes: dict[str, int],
    cuda_available: Callable[[], bool] = _torch_sees_cuda,
) -> DeviceChoice:
    """Resolve DEVICE/PRECISION/MAX_BATCH_SIZE* into what the registry uses."""
    if requested not in DEVICES:
        raise ValueError(f"DEVICE must be one of {DEVICES}, not {requested!r}")
    if requested == "cpu":
        device = "cpu"
    elif cuda_available():
        device = "cuda"
    elif requested == "cuda":
        raise DeviceUnavailable(
            "DEVICE=cuda but torch sees no CUDA device: check the NVIDIA driver (nvidia-smi), that the "
            "container was given the GPU (resources.gpus / --gpus) and that the image is the GPU "
            "variant (flashfit build --gpu); or set DEVICE=auto or cpu"
        )
    else:
        device = "cpu"
    wanted = "fp16" if precision == "auto" and device == "cuda" else ("fp32" if precision == "auto" else precision)
    if device == "cpu":
        wanted = "fp32"  # fp16 matmuls on the CPU are slower than fp32, and no more exact
    return DeviceChoice(device=device, precision=wanted, max_batch_size=batch_sizes[device])


def gpu_memory(device: str) -> dict[str, int]:
    """Bytes this process holds on the GPU (allocated by tensors, reserved by the caching
    allocator) and the device's total; zeros on the CPU."""
    if device != "cuda":
        return {"allocated_bytes": 0, "reserved_bytes": 0, "total_bytes": 0}
    import torch

    index = torch.cuda.current_device()
    return {
        "allocated_bytes": int(torch.cuda.memory_allocated(index)),
        "reserved_bytes": int(torch.cuda.memory_reserved(index)),
        "total_bytes": int(torch.cuda.get_device_properties(index).total_memory),
    }


def device_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return str(torch.cuda.get_device_name(torch.cuda.current_device()))
