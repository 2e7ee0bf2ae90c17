"""A device's name and memory, for health reports (``/health``, gRPC ``GetInfo``)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


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
