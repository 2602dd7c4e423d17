"""The one list of precisions, and what each one is.

A *graph* precision has an artifact of its own in the bundle (an ONNX graph or a plan built from
one); a *runtime* precision is applied by a backend to the FP32 graph (OpenVINO's BF16 hint).
"""
from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"

    @property
    def runtime_only(self) -> bool:
        """No artifact of its own: a backend runs the FP32 graph at this precision."""
        return self is Precision.BF16

    @property
    def graph(self) -> "Precision":
        """The precision of the artifact that runs it."""
        return Precision.FP32 if self.runtime_only else self

    @property
    def rank(self) -> int:
        """0 is the most precise: fp32 < fp16 < bf16 (8-bit mantissa) < int8."""
        return _RANK[self]


_RANK = {Precision.FP32: 0, Precision.FP16: 1, Precision.BF16: 2, Precision.INT8: 3}

#: every precision, graph ones first (the order reports list them in)
ALL = tuple(p.value for p in Precision)
#: precisions with an artifact of their own
GRAPH = tuple(p.value for p in Precision if not p.runtime_only)
#: precisions a backend applies at run time to the FP32 graph
RUNTIME = tuple(p.value for p in Precision if p.runtime_only)
#: the reference every other precision is validated against
REFERENCE = Precision.FP32.value


def rank(name: str) -> int:
    """:attr:`Precision.rank` of a name; unknown names rank last."""
    try:
        return Precision(name).rank
    except ValueError:
        return len(_RANK)


__all__ = ["Precision", "ALL", "GRAPH", "RUNTIME", "REFERENCE", "rank"]
