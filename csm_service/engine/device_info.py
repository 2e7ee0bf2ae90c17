"""A device's name and memory, for health reports (``/health``, gRPC ``GetInfo``) and metrics."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from csm_service.engine.memory import MemoryProbe, read_meminfo


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {
            "device": "cuda",
            "device_name": props.name,
            "memory_total_bytes": int(props.total_memory),
            "memory_allocated_bytes": int(torch.cuda.memory_allocated(index)),
        }
    return {"device": device.type, "device_name": _cpu_name(), "memory_total_bytes": 0, "memory_allocated_bytes": 0}


def device_memory(device: torch.device) -> dict[str, int]:
    """Bytes on ``device`` now, cheap enough for every scrape (no synchronize, no cache flush).

    CUDA: ``allocated`` in live tensors, ``reserved`` held by the caching allocator (what the device
    sees of this process), ``total`` the device's. CPU: the resident set for both, the RAM as total.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {
            "allocated": int(torch.cuda.memory_allocated(index)),
            "reserved": int(torch.cuda.memory_reserved(index)),
            "total": int(torch.cuda.get_device_properties(index).total_memory),
        }
    resident = MemoryProbe(device).current()
    meminfo = read_meminfo()
    return {"allocated": resident, "reserved": resident, "total": meminfo[0] if meminfo else 0}
