"""How many batch slots fit: start-up in nano-vllm's order, with a memory budget like vLLM's.

Start-up: build -> load -> warm up on a one-slot cache (measuring the largest prefill chunk and one
row's frame) -> free that cache -> measure free memory -> size the slots -> allocate -> capture.

    room      = free - (1 - memory_utilization) * total     (CUDA: the device; CPU: RAM, MemAvailable)
              or, with memory_budget_mb, min(free, budget - weights)
    kv room   = room - activation peak - prefix cache budget
    slots     = min(max_batch, kv room // (KV bytes per slot + frame bytes per slot))

:func:`plan_slots` is the arithmetic alone (unit-tested with given figures); :class:`MemoryProbe`
measures the figures on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from csm_service.config import CsmConfig

MiB = 1 << 20


class NotEnoughMemory(RuntimeError):
    """Not even one batch slot fits in the memory budget."""


@dataclass(frozen=True)
class MemoryFigures:
    """What start-up measured, in bytes."""

    total_bytes: int  # the device's memory (CPU: MemTotal)
    free_bytes: int  # free after load and warm-up, warm-up cache freed (CPU: MemAvailable)
    weight_bytes: int  # the model's weights as they sit on the device
    activation_peak_bytes: int  # transient peak of the largest prefill chunk the engine runs
    frame_bytes_per_slot: int  # working memory of one row's frame (step + audio decode), measured at one row


@dataclass(frozen=True)
class SlotPlan:
    num_slots: int
    room_bytes: int  # what this engine may still allocate
    kv_room_bytes: int  # of which the slots may take (room less activations and prefix cache)
    kv_bytes_per_slot: int
    per_slot_bytes: int  # KV + frame working memory
    limited_by: str  # "max_batch" | "memory"
    budget_rule: str  # how room was derived, for the log

    def describe(self) -> str:
        return (
            f"{self.num_slots} slot(s), limited by {self.limited_by}: room {self.room_bytes / MiB:.0f} MiB "
            f"({self.budget_rule}); {self.kv_room_bytes / MiB:.0f} MiB for slots after activations and the "
            f"prefix cache; {self.per_slot_bytes / MiB:.2f} MiB per slot "
            f"(KV {self.kv_bytes_per_slot / MiB:.2f} MiB + frame {(self.per_slot_bytes - self.kv_bytes_per_slot) / MiB:.2f} MiB)"
        )


def plan_slots(
    figures: MemoryFigures,
    kv_bytes_per_slot: int,
    max_batch: int,
    utilization: float,
    prefix_cache_bytes: int,
    budget_bytes: int = 0,
) -> SlotPlan:
    """The number of batch slots (<= ``max_batch``); NotEnoughMemory if not even one fits."""
    if not 0 < utilization <= 1:
        raise ValueError(f"memory_utilization must be in (0, 1], not {utilization}")
    gib = 1 << 30
    if budget_bytes:
        room = min(figures.free_bytes, budget_bytes - figures.weight_bytes)
        rule = f"budget {budget_bytes / gib:.2f} GiB - weights {figures.weight_bytes / gib:.2f} GiB, at most free"
    else:
        room = int(figures.free_bytes - (1 - utilization) * figures.total_bytes)
        rule = (
            f"free {figures.free_bytes / gib:.2f} GiB - {1 - utilization:.2f} x total "
            f"{figures.total_bytes / gib:.2f} GiB (memory_utilization {utilization})"
        )
    kv_room = room - figures.activation_peak_bytes - prefix_cache_bytes
    per_slot = kv_bytes_per_slot + figures.frame_bytes_per_slot
    fits = max(0, kv_room) // per_slot
    if fits < 1:
        raise NotEnoughMemory(
            f"not enough memory for one batch slot: room {room / MiB:.0f} MiB ({rule}) less activations "
            f"{figures.activation_peak_bytes / MiB:.0f} MiB and prefix cache {prefix_cache_bytes / MiB:.0f} MiB "
            f"leaves {kv_room / MiB:.0f} MiB; one slot needs {per_slot / MiB:.1f} MiB. Raise memory_utilization "
            "(CSM_MEMORY_UTILIZATION) or memory_budget_mb, lower prefix_cache_mb or prefill_chunk_positions, "
            "or free the device"
        )
    num_slots = min(max_batch, fits)
    return SlotPlan(
        num_slots=num_slots,
        room_bytes=room,
        kv_room_bytes=kv_room,
        kv_bytes_per_slot=kv_bytes_per_slot,
        per_slot_bytes=per_slot,
        limited_by="max_batch" if fits >= max_batch else "memory",
        budget_rule=rule,
    )


def kv_bytes_per_slot(cfg: CsmConfig, itemsize: int) -> int:
    """Static KV cache of one slot: the backbone over max_seq_len positions + the depth decoder's 32."""
    b, d = cfg.backbone, cfg.decoder
    backbone = b.num_layers * cfg.max_seq_len * b.num_kv_heads * b.head_dim
    decoder = d.num_layers * cfg.num_codebooks * d.num_kv_heads * d.head_dim
    return 2 * itemsize * (backbone + decoder)  # keys and values


def weight_bytes(model: nn.Module) -> int:
    """Parameters, buffers and prepacked weights of ``model``, KV caches excluded."""
    from csm_service.model.llama import KVCache

    total = 0
    for module in model.modules():
        if isinstance(module, KVCache):
            continue
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        packed = getattr(module, "packed", None)  # fuse.PackedLinear keeps its oneDNN copy as an attribute
        if isinstance(packed, torch.Tensor):
            tensors.append(packed)
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def read_meminfo(path: str = "/proc/meminfo") -> tuple[int, int] | None:
    """-> (MemTotal, MemAvailable) in bytes, or None where there is no /proc/meminfo."""
    try:
        fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) << 10, int(fields["MemAvailable"].split()[0]) << 10
    except (OSError, KeyError, ValueError):
        return None


class MemoryProbe:
    """Current and peak memory of this process on a device: CUDA's allocator statistics, or on CPU
    the resident set (VmRSS) and its high-water mark (VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"

    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.is_cuda else self._status("VmRSS")

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.is_cuda else self._status("VmHWM")

    def reset_peak(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):  # without it the peak is the lifetime's: larger, so safe
            Path("/proc/self/clear_refs").write_text("5")

    def totals(self) -> tuple[int, int] | None:
        """-> (total, free) bytes of the device now, or None where they cannot be read."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info(self.device)
            return total, free
        return read_meminfo()

    @staticmethod
    def _status(key: str) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) << 10
        except OSError:
            pass
        return 0
