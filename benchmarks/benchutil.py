"""Settings shared by the benchmark suites (read from the environment; see benchmarks/README.md), and the
scaffolding the benchmark scripts share (their phantom set, the machine line, writing their report)."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def threads() -> int | None:
    """EDGEINFER_BENCH_THREADS (0 = each backend's default), else the CPUs this process may use."""
    from edgeinfer.sysinfo import usable_cpus

    value = os.environ.get("EDGEINFER_BENCH_THREADS")
    if value:
        return int(value) or None
    return usable_cpus()


def bundle_paths() -> list[str | None]:
    """EDGEINFER_BENCH_BUNDLES as a list; None stands for the embedded phantom bundle."""
    value = os.environ.get("EDGEINFER_BENCH_BUNDLES", "").strip()
    return [p.strip() for p in value.split(",") if p.strip()] if value else [None]


def batches() -> list[int]:
    return [int(x) for x in os.environ.get("EDGEINFER_BENCH_BATCHES", "1,4").split(",") if x.strip()]


# --- the benchmark scripts ----------------------------------------------------------------------------
def script_parser(doc: str, *, n: int, seed: int, data_help: str | None = None) -> argparse.ArgumentParser:
    """The arguments every intake script takes, with its own defaults: a DICOM folder (``data``; else a
    phantom set of ``--n`` images from ``--seed``, :func:`phantom_set`), and where :func:`publish` writes
    (``--json``, ``--report``). The script adds its own before parsing."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("data", nargs="?", help=data_help)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None)
    return ap


def phantom_set(data: str | None, n: int, seed: int, *, prefix: str, max_size: int | None = None) -> Path:
    """``data`` (DICOM files of one's own, or a phantom set), or a new temporary folder; a phantom set is
    generated there when the folder is absent or empty."""
    from edgeinfer import phantom

    folder = Path(data or tempfile.mkdtemp(prefix=prefix))
    if not folder.exists() or not any(folder.iterdir()):
        phantom.generate(folder, n, seed=seed, max_size=max_size)
    return folder


def dicom_files(folder: Path) -> list[Path]:
    from edgeinfer.intake import discover

    return [f for f in discover([folder]) if f.suffix == ".dcm"]


def machine_line(*, flags: bool = False) -> str:
    """This CPU as a report names it: model, usable CPUs (and, with ``flags``, its vector extensions)."""
    from edgeinfer.sysinfo import machine_info

    cpu = machine_info()["cpu"]
    extra = "; " + ", ".join(f for f, on in cpu["flags"].items() if on) if flags else ""
    return f"{cpu['model']} ({cpu['usable_cpus']} usable CPUs{extra})"


def publish(report: dict, text: str, json_path: str | None, md_path: str | None) -> None:
    """Print the Markdown, and write the JSON and the Markdown where asked (atomically)."""
    from edgeinfer._io import atomic_write, emit_json

    print(text)
    if json_path:
        emit_json(report, json_path)
    if md_path:
        atomic_write(md_path, text.encode())
