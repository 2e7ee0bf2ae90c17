"""Operators that name an untraceable CPU weight by an int handle, registered the light way.

A oneDNN prepacked weight (model/fuse.py) or an fbgemm packed int8 weight (model/quantize.py) is an
opaque object that ``torch.compile`` cannot trace, so a compiled graph calls an operator that takes
the weight's handle (an int, symbolic where a graph serves every codebook) and looks it up.

These operators are defined with a plain ``torch.library.Library``: a schema, one CPU kernel and a
fake kernel for tracing. ``torch.library.custom_op`` would do the same with a Python autograd layer
in front of every call; measured on the 2-core dev machine, a call through it cost ~30 us more than
the kernel alone and one defined here ~2 us more (``linear_dynamic`` on a 2048 x 1024 weight: 36 us
bare, 64 us through ``custom_op``, 38 us here). A full-size frame makes ~600 such calls. Nothing
here has a gradient: inference only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["define_handle_op"]

_LIB = torch.library.Library("csm", "FRAGMENT")


def define_handle_op(name: str, kernel: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """Define ``torch.ops.csm.<name>(x [..., K], handle, out_features) -> [..., N]`` running
    ``kernel`` on CPU. The fake kernel (for tracing) says the output has x's dtype and leading shape
    with ``out_features`` columns: ``kernel`` must keep to that."""
    _LIB.define(f"{name}(Tensor x, SymInt handle, SymInt out_features) -> Tensor")
    _LIB.impl(name, kernel, "CPU")

    def fake(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], out_features))

    torch.library.register_fake(f"csm::{name}", fake, lib=_LIB)
