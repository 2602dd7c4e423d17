"""Reading what the policy's rules compare: TensorRT versions (:func:`parse_version`), compute
capabilities (with the GPU family names used in messages), hardware-compatibility levels, and
integer arguments (:func:`check_int`)."""
from __future__ import annotations

import re
from typing import Any, Sequence

from ..errors import PolicyError

HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")
#: the oldest TensorRT (major, minor) this runtime builds with and loads plans of
MIN_TENSORRT = (10, 0)

#: compute capability -> family, for readable messages only
_ARCH = {
    (5, 3): "Maxwell (Jetson Nano)", (6, 1): "Pascal", (6, 2): "Pascal (Jetson TX2)", (7, 0): "Volta",
    (7, 2): "Xavier", (7, 5): "Turing", (8, 0): "Ampere (A100)", (8, 6): "Ampere",
    (8, 7): "Orin", (8, 9): "Ada Lovelace", (9, 0): "Hopper", (10, 0): "Blackwell",
    (10, 1): "Thor", (11, 0): "Thor", (12, 0): "Blackwell (RTX)", (12, 1): "Blackwell (GB10)",
}


# --- versions ---------------------------------------------------------------------------------
_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+){0,3})((?:[.+\-]?[A-Za-z][0-9A-Za-z.+\-]*)?)$")


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; ``"11.4"`` -> ``(11, 4)``.

    Accepts 2 to 4 numeric parts (TensorRT reports major.minor.patch.build) and ignores a
    trailing tag such as ``.post1``, ``rc1`` or ``+cuda12``. Anything else is a PolicyError.
    """
    if not isinstance(text, str):
        raise PolicyError(f"version must be a string like '10.3.0.30', not {type(text).__name__} {text!r}")
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise PolicyError(f"cannot read version {text!r}: expected major.minor[.patch[.build]], e.g. '10.3.0.30'")
    parts = tuple(int(p) for p in m.group(1).split("."))
    if len(parts) < 2:
        raise PolicyError(f"cannot read version {text!r}: need at least major.minor, e.g. '10.3'")
    return parts


def _pad4(v: Sequence[int]) -> tuple[int, int, int, int]:
    return tuple(list(v) + [0] * (4 - len(v)))[:4]  # type: ignore[return-value]


def _short(v: Sequence[int], n: int = 3) -> str:
    return ".".join(str(x) for x in _pad4(v)[:n])


def parse_compute_capability(cc: Any) -> tuple[int, int]:
    """``"8.7"``, ``(8, 7)`` or ``[8, 7]`` -> ``(8, 7)``."""
    if isinstance(cc, str):
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", cc)
        if m:
            return int(m.group(1)), int(m.group(2))
    elif isinstance(cc, (tuple, list)) and len(cc) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in cc):
        return int(cc[0]), int(cc[1])
    raise PolicyError(f"compute capability must look like '8.7', not {cc!r}")


def _cc_str(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def describe_cc(cc: tuple[int, int]) -> str:
    name = _ARCH.get(tuple(cc))
    return f"{_cc_str(cc)} ({name})" if name else _cc_str(cc)


def normalize_hardware_compat(level: Any) -> str:
    """None/'none' -> 'none'; 'AMPERE_PLUS', 'ampere-plus' -> 'ampere_plus'; ..."""
    if level is None:
        return "none"
    if not isinstance(level, str):
        raise PolicyError(f"hardware compatibility level must be one of {', '.join(HARDWARE_COMPAT_LEVELS)}, "
                          f"not {level!r}")
    key = level.strip().lower().replace("-", "_")
    key = {"ampere+": "ampere_plus", "same_cc": "same_compute_capability"}.get(key, key)
    if key not in HARDWARE_COMPAT_LEVELS:
        raise PolicyError(f"hardware compatibility level {level!r} is not one of {', '.join(HARDWARE_COMPAT_LEVELS)}")
    return key


def check_int(value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else a PolicyError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{what} must be an integer, not {value!r}")
    if value < minimum:
        raise PolicyError(f"{what} must be >= {minimum}, not {value}")
    return value
