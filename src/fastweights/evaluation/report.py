"""Reports of ``fastweights eval``: the loss-against-position table and plot of a carried-state model."""

from __future__ import annotations

from pathlib import Path
from typing import List

from .loss import PositionProfile


def format_position_table(profile: PositionProfile, unit: str) -> List[str]:
    """Markdown rows: nats per ``unit`` and the mean fast-weight norm per position range."""
    rows = [f"| position | nats/{unit} | mean ‖S‖_F |", "|---|---:|---:|"]
    rows += [f"| {label} | {nats:.4f} | {norm:.3g} |" for label, nats, norm in profile.buckets()]
    return rows


def plot_position_profile(profile: PositionProfile, path: Path, context: int, title: str) -> Path:
    """Loss (left axis) and ``||S||_F`` (right axis) against the position, log scale, with the training
    context marked; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = [s + profile.segment / 2 for s in profile.start]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(mid, profile.nats, color="tab:blue", lw=1.2, label="loss (nats)")
    ax.set_xscale("log")
    ax.set_xlabel(f"position in the stream (mean over {profile.streams} streams)")
    ax.set_ylabel("loss (nats)", color="tab:blue")
    ax.axvline(context, color="gray", ls="--", lw=1, label=f"training context ({context})")
    norm_ax = ax.twinx()
    norm_ax.plot(mid, profile.state_norm, color="tab:red", lw=1.2, label="mean ||S||_F")
    norm_ax.set_ylabel("mean ||S||_F per layer and head", color="tab:red")
    ax.set_title(title)
    lines = ax.get_legend_handles_labels()[0] + norm_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
