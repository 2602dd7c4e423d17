"""Batch sizes and what they become: the (min, opt, max) batch of an optimisation profile, the
profile's shapes and DLA's limits on them, and the batches an INT8 calibration set is fed in."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import PolicyError
from .versions import check_int

#: DLA general restrictions (dla-layer-restrictions.html)
DLA_MAX_BATCH = 4096
DLA_MAX_DIM = 8192
#: the largest batch this runtime accepts in an optimisation profile (a sanity bound)
MAX_BATCH = 4096


# --- batch and optimisation profiles ---------------------------------------------------------
def parse_batch(text: str) -> tuple[int, int, int]:
    """``"1,4,8"`` -> ``(1, 4, 8)``; ``"8"`` -> ``(8, 8, 8)`` (a fixed batch)."""
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f"--batch must be MIN,OPT,MAX (e.g. 1,4,8) or one fixed size (e.g. 8), not {text!r}")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise PolicyError(f"--batch {text!r}: expected MIN,OPT,MAX (e.g. 1,4,8) or one fixed size (e.g. 8)")
    values = tuple(int(p) for p in parts)
    batch = values * 3 if len(values) == 1 else values
    return check_batch(batch)  # type: ignore[arg-type]


def check_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    """Validate a (min, opt, max) batch triple: 1 <= min <= opt <= max <= MAX_BATCH."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3:
        raise PolicyError(f"batch must be (min, opt, max), not {batch!r}")
    lo, opt, hi = (check_int(b, f"batch {name}", minimum=1) for b, name in zip(batch, ("min", "opt", "max")))
    if not lo <= opt <= hi:
        raise PolicyError(f"batch (min, opt, max) = ({lo}, {opt}, {hi}) must satisfy 1 <= min <= opt <= max")
    if hi > MAX_BATCH:
        raise PolicyError(f"batch max {hi} is larger than {MAX_BATCH}; a profile that large wastes device memory")
    return lo, opt, hi


def _is_dynamic(dim: Any) -> bool:
    return dim is None or isinstance(dim, str) or (isinstance(dim, int) and not isinstance(dim, bool) and dim < 0)


def profile_shapes(inputs: Mapping[str, Sequence[Any]], batch: Sequence[int] = (1, 1, 8)
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The optimisation profile: ``{input name: (min_shape, opt_shape, max_shape)}``.

    ``inputs`` maps each network input to its shape, where the first (batch) axis may be
    dynamic (``-1`` as TensorRT reports it, ``None``, or a name such as ``"batch"`` as the
    manifest writes it). Every other axis must be static: a second dynamic axis would need
    its own min/opt/max, which this runtime does not guess. A static batch axis is kept as
    it is, and then ``batch`` must be that fixed size.
    """
    lo, opt, hi = check_batch(batch)
    if not isinstance(inputs, Mapping) or not inputs:
        raise PolicyError("the network has no inputs to build an optimisation profile for")
    out = {}
    for name, shape in inputs.items():
        shape = list(shape)
        if not shape:
            raise PolicyError(f"input {name!r} is a scalar; expected (batch, ...)")
        for i, d in enumerate(shape[1:], start=1):
            if _is_dynamic(d):
                raise PolicyError(f"input {name!r} has a dynamic axis {i} ({d!r}) besides the batch axis; "
                                  f"only the batch axis may be dynamic. Re-export with a fixed size "
                                  f"(shape is {shape}).")
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise PolicyError(f"input {name!r} axis {i} is {d!r}; dimensions must be positive integers")
        rest = tuple(int(d) for d in shape[1:])
        first = shape[0]
        if _is_dynamic(first):
            out[name] = ((lo,) + rest, (opt,) + rest, (hi,) + rest)
        else:
            if isinstance(first, bool) or not isinstance(first, int) or first < 1:
                raise PolicyError(f"input {name!r} batch axis is {first!r}; expected a positive integer or dynamic")
            if (lo, opt, hi) != (first, first, first):
                raise PolicyError(f"input {name!r} has a fixed batch of {first} (shape {shape}); the engine can only "
                                  f"run batch {first}, but batch {lo},{opt},{hi} was asked. Pass --batch {first} "
                                  "or re-export with a dynamic batch axis.")
            fixed = (first,) + rest
            out[name] = (fixed, fixed, fixed)
    return out


def check_dla_profile(shapes: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> None:
    """DLA has no dynamic dimensions (min == opt == max), batch <= 4096, other dims <= 8192."""
    for name, (lo, opt, hi) in shapes.items():
        if not (tuple(lo) == tuple(opt) == tuple(hi)):
            raise PolicyError(f"DLA does not support dynamic dimensions: input {name!r} profile is "
                              f"min {tuple(lo)}, opt {tuple(opt)}, max {tuple(hi)}. Pass one fixed batch, e.g. --batch {hi[0]}.")
        if hi[0] > DLA_MAX_BATCH:
            raise PolicyError(f"DLA supports batch <= {DLA_MAX_BATCH}; input {name!r} asks {hi[0]}")
        big = [d for d in hi[1:] if d > DLA_MAX_DIM]
        if big:
            raise PolicyError(f"DLA supports non-batch dimensions <= {DLA_MAX_DIM}; input {name!r} has {tuple(hi)}")


# --- INT8 calibration (TensorRT 10.x) -----------------------------------------------------------
def calibration_batches(x: Any, batch: int, *, last: str = "drop") -> list:
    """Split a calibration tensor stack ``x`` (N, ...) into batches of exactly ``batch``.

    TensorRT feeds every calibration batch at the calibration profile's shape, so all
    batches have the same size. ``last`` decides the final partial batch:
    ``"drop"`` (default) leaves it out; ``"pad"`` fills it with samples from the start of
    the set (every sample is seen, a few twice); ``"error"`` refuses a set that does not
    divide evenly.
    """
    import numpy as np

    batch = check_int(batch, "calibration batch", minimum=1)
    if last not in ("drop", "pad", "error"):
        raise PolicyError(f"last-batch policy {last!r} is not one of drop, pad, error")
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise PolicyError(f"calibration data must be a numpy array (N, ...) with a sample axis, "
                          f"not {type(x).__name__}{getattr(x, 'shape', '')}")
    n = x.shape[0]
    if n == 0:
        raise PolicyError("the calibration set is empty")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise PolicyError("the calibration set contains NaN or infinite values; fix the preprocessing first")
    full, rest = divmod(n, batch)
    if rest and last == "error":
        raise PolicyError(f"{n} calibration samples do not divide into batches of {batch} ({rest} left over)")
    if full == 0 and last == "drop":
        raise PolicyError(f"the calibration set has {n} samples, fewer than one batch of {batch}; "
                          "use a smaller batch or last='pad'")
    out = [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(full)]
    if rest and last == "pad":
        idx = [(full * batch + k) % n for k in range(rest)] + [k % n for k in range(batch - rest)]
        out.append(np.ascontiguousarray(x[idx]))
    return out
