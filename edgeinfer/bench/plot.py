"""The PNG of ``edgeinfer bench``: latency distributions, speed against accuracy, and where the time
goes end to end. matplotlib is imported only when a plot is drawn."""
from __future__ import annotations

import io
import os
from pathlib import Path

from .._io import atomic_write
from .e2e import STAGES
from .report import _f, _sig, row_label


def render_plot(report: dict, path: str | os.PathLike) -> Path:
    """PNG: latency distribution per (backend, precision), speed against accuracy, end-to-end breakdown."""
    from .._lazy import lazy_import

    mpl = lazy_import("matplotlib", extra="dev", purpose="edgeinfer bench --plot")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    batch = min((r["batch"] for r in ok), default=1)
    rows = [r for r in ok if r["batch"] == batch]
    has_e2e = any(e.get("serial") for e in report.get("e2e", []))
    n_e2e = sum(1 for e in report.get("e2e", []) if e.get("serial"))
    bottom = 1.2 + 0.45 * n_e2e
    fig = plt.figure(figsize=(15, 6 + bottom if has_e2e else 6), dpi=110)
    grid = fig.add_gridspec(2 if has_e2e else 1, 2, height_ratios=[6, bottom] if has_e2e else [1])
    ax1, ax2 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    colours = {"onnxruntime": "#1f77b4", "openvino": "#d62728", "tensorrt": "#2ca02c"}

    # 1. latency distribution
    if rows:
        data = [r["distribution_ms"] for r in rows]
        pos = list(range(1, len(rows) + 1))
        import inspect

        horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax1.boxplot).parameters
                      else {"vert": False})  # matplotlib 3.10 renamed it
        bp = ax1.boxplot(data, positions=pos, whis=(1, 99), showfliers=False, widths=0.6, patch_artist=True,
                         medianprops={"color": "black", "linewidth": 1.5}, **horizontal)
        for patch, r in zip(bp["boxes"], rows):
            patch.set_facecolor(colours.get(r["backend"], "grey"))
            patch.set_alpha(0.45)
        for p, r in zip(pos, rows):
            lo, hi = r["spread"]["min_ms"], r["spread"]["max_ms"]
            ax1.plot([lo, hi], [p + 0.38, p + 0.38], color="black", linewidth=2.5, solid_capstyle="butt")
            ax1.plot(r["raw"]["p50_ms"], p - 0.38, marker="v", color="black", markersize=6, linestyle="none")
            ax1.annotate(f"p50 {_sig(r['p50_ms'])} ms", (r["p99_ms"], p), xytext=(6, 0), textcoords="offset points",
                         va="center", fontsize=8)
        ax1.set_yticks(pos, [row_label(r) for r in rows], fontsize=9)
        vals = [v for d in data for v in d if v and v > 0]
        if vals and max(vals) / min(vals) > 20:
            ax1.set_xscale("log")
        right = max(r["p99_ms"] for r in rows)
        ax1.set_xlim(right=right * (1.6 if ax1.get_xscale() == "log" else 1.35))
        ax1.invert_yaxis()
        ax1.plot([], [], marker="v", color="black", linestyle="none", label="raw backend call p50")
        ax1.plot([], [], color="black", linewidth=2.5, label="spread of per-block p50")
        ax1.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    else:
        ax1.text(0.5, 0.5, "no row could be measured", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_xlabel("latency per call (ms); box = p25-p75, whiskers = p1-p99")
    ax1.set_title(f"Latency distribution, batch {batch}", fontsize=11, loc="left")
    ax1.grid(axis="x", alpha=0.3)

    # 2. speed against accuracy
    metric = next((k for k in ("auc", "agreement") if any((r["accuracy"] or {}).get(k) is not None for r in rows)), None)
    validated = [r for r in rows if metric and r["accuracy"].get(metric) is not None]
    others = [r for r in rows if r not in validated]
    for r in validated:
        ax2.scatter(r["p50_ms"], r["accuracy"][metric], s=70, color=colours.get(r["backend"], "grey"),
                    marker="o" if r["accuracy"]["gate"] in ("passed", "reference") else "X", zorder=3)
        ax2.annotate(row_label(r), (r["p50_ms"], r["accuracy"][metric]), xytext=(5, 4), textcoords="offset points",
                     fontsize=8)
    if validated:
        lo = min(r["accuracy"][metric] for r in validated)
        hi = max(r["accuracy"][metric] for r in validated)
        pad = max(0.002, (hi - lo) * 0.25)
        ax2.set_ylim(lo - 3 * pad, hi + pad)
        floor = lo - 2.2 * pad
        ax2.axhline(lo - 1.5 * pad, color="grey", linewidth=0.8, linestyle=":")
    else:
        ax2.set_ylim(0, 1)
        ax2.set_yticks([])
        floor = 0.5
    for i, r in enumerate(others):
        ax2.scatter(r["p50_ms"], floor, s=70, facecolors="none", edgecolors=colours.get(r["backend"], "grey"),
                    linewidths=1.5, zorder=3)
        ax2.annotate(row_label(r), (r["p50_ms"], floor), xytext=(5, 6 + 9 * (i % 3)), textcoords="offset points",
                     fontsize=8, rotation=0)
    key = []
    if others and not validated:
        key.append("no validation records in this bundle (edgeinfer validate writes them); hollow = not validated")
    elif others:
        key.append("hollow: no accuracy record (fp32 is the reference)")
    if any(r["accuracy"]["gate"] == "failed" for r in validated):
        key.append("X: failed the accuracy gate")
    if key:
        ax2.text(0.01, 0.02 if validated else 0.44, "; ".join(key), transform=ax2.transAxes, fontsize=8,
                 color="dimgrey")
    ax2.set_xlabel(f"p50 latency, batch {batch} (ms); left = faster")
    ax2.set_ylabel({"auc": "AUC (validation record)", "agreement": "agreement with FP32 priorities"}.get(metric, ""))
    ax2.set_title("Speed against accuracy", fontsize=11)
    ax2.grid(alpha=0.3)
    if rows:
        xs = [r["p50_ms"] for r in rows]
        ax2.set_xlim(min(xs) * 0.8, max(xs) * 1.35)

    # 3. end to end
    if has_e2e:
        ax3 = fig.add_subplot(grid[1, :])
        e2e = [e for e in report["e2e"] if e.get("serial")]
        stage_colours = ["#8c564b", "#e377c2", "#7f7f7f", "#1f77b4", "#bcbd22"]
        widest = max(sum((e["serial"]["per_image_ms"].get(st) or 0.0) for st in STAGES) for e in e2e)
        for i, e in enumerate(e2e):
            left = 0.0
            for st, c in zip(STAGES, stage_colours):
                w = e["serial"]["per_image_ms"].get(st) or 0.0
                ax3.barh(i, w, left=left, color=c, label=st if i == 0 else None, height=0.55)
                if w > 0.06 * widest:
                    ax3.text(left + w / 2, i, _sig(w), ha="center", va="center", fontsize=8, color="white")
                left += w
            ax3.text(left, i, f"  serial {_f(e['serial']['studies_per_s'], 2)} studies/s, overlapped "
                              f"({e['overlapped']['workers']} threads) {_f(e['overlapped']['studies_per_s'], 2)} studies/s",
                     va="center", fontsize=9)
        ax3.set_yticks(range(len(e2e)), [row_label(e) for e in e2e])
        ax3.invert_yaxis()
        ax3.set_ylim(len(e2e) - 0.5, -0.5 - (0.6 if len(e2e) < 3 else 0.3))  # room for the legend
        ax3.set_xlim(0, widest * 2.0)
        ax3.set_xlabel("mean ms per image, serial (DICOM file -> priority)")
        ax3.set_title(f"End to end over {e2e[0]['files']} files: where the time goes", fontsize=11)
        ax3.legend(ncol=5, fontsize=8, loc="upper right", frameon=False)
        ax3.grid(axis="x", alpha=0.3)

    m = report["machine"]
    fig.suptitle(f"edgeinfer bench: {report['bundle']['name']} on {m['cpu']['model']}, {m['cpu']['usable_cpus']} CPUs, "
                 f"threads {report['settings'].get('threads') or 'default'}, load avg {m['load_average'].get('start')}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return atomic_write(out, buf.getvalue())
