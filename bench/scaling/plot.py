#!/usr/bin/env python3
"""Plots docs/scaling/*.csv into docs/scaling/*.png (matplotlib)."""
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else "docs/scaling"


def rows(name):
    with open(os.path.join(OUT, name)) as f:
        return list(csv.DictReader(f))


def engine():
    data = rows("engine_scaling.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, scaling in zip(axes, ["strong", "weak"]):
        for mode, style in [("offline", "o-"), ("served", "s--")]:
            pts = [(int(r["ranks"]), float(r["tokens_per_s"])) for r in data
                   if r["mode"] == mode and r["scaling"] == scaling and r["tokens_per_s"]]
            if pts:
                ax.plot(*zip(*sorted(pts)), style, label=mode)
        ax.set_title(f"small-dsv3, {scaling} scaling ({'16 sequences' if scaling == 'strong' else '4 sequences per rank'})")
        ax.set_xlabel("ranks (on 2 vCPUs: 4 and 8 are oversubscribed)")
        ax.set_ylabel("output tokens/s")
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "engine_scaling.png"), dpi=110)


def alltoall():
    data = rows("alltoall_netns.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for rate in sorted({r["rate_gbit"] for r in data}, key=float):
        pts = [r for r in data if r["rate_gbit"] == rate]
        mb = [float(r["send_bytes_per_rank"]) / 1e6 for r in pts]
        axes[0].loglog(mb, [float(r["ours_us"]) / 1e3 for r in pts], "o-", label=f"measured, {rate} Gbit/s")
        axes[0].loglog(mb, [float(r["model_us"]) / 1e3 for r in pts], "k:", alpha=0.6)
        axes[1].semilogx(mb, [float(r["ours_us"]) / float(r["model_us"]) for r in pts], "o-",
                         label=f"{rate} Gbit/s")
    axes[0].set_xlabel("MB sent per rank (dispatch)")
    axes[0].set_ylabel("dispatch + combine, ms (dotted: model)")
    axes[0].set_title("3 emulated hosts, 1 rank each")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_xlabel("MB sent per rank (dispatch)")
    axes[1].set_ylabel("measured / model")
    axes[1].set_title("against the planner's communication model")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "alltoall_vs_model.png"), dpi=110)


def published():
    data = rows("planner_vs_published.csv")
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [r["deployment"] for r in data]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [float(r["predicted"]) for r in data], 0.4, label="moe-plan")
    ax.bar([i + 0.2 for i in x], [float(r["published"]) for r in data], 0.4, label="published")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("tokens/s per node")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "planner_vs_published.png"), dpi=110)


for f in (engine, alltoall, published):
    try:
        f()
        print("plotted", f.__name__)
    except FileNotFoundError as e:
        print("skipped", f.__name__, e)
