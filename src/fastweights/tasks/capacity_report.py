"""Tables and the plot of a capacity sweep: final loss against S, one line per method."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from .capacity import CellResult

PREDICTS_NOTHING = 0.5  # the loss of an output of zeros


TITLES = {1: "setting 1: each key once (length S)", 2: "setting 2: keys repeat (length 2S)",
          3: "setting 3: only the last S/4 pairs asked (length 2S)"}


def _by_setting(rows: Sequence[CellResult]) -> Dict[int, Dict[Tuple[str, object], Dict[int, CellResult]]]:
    """``{setting: {(method, d_dot): {S: row}}}``, methods in first-seen order."""
    out: Dict[int, Dict[Tuple[str, object], Dict[int, CellResult]]] = {}
    for r in rows:
        out.setdefault(r.setting, {}).setdefault((r.method, r.d_dot), {})[r.n_keys] = r
    return out


def format_table(rows: Sequence[CellResult]) -> str:
    """Markdown tables (one per setting) of the final loss, methods by S."""
    blocks = []
    for setting, methods in sorted(_by_setting(rows).items()):
        keys = sorted({s for cells in methods.values() for s in cells})
        lines = [
            f"setting {setting}: final loss (0.5 = predicts nothing)",
            "",
            "| method | d_dot | " + " | ".join(f"S={s}" for s in keys) + " |",
            "|---|---:|" + "---:|" * len(keys),
        ]
        for (method, d_dot), cells in methods.items():
            values = [f"{cells[s].final_loss:.2g}" if s in cells else "" for s in keys]
            lines.append(f"| {method} | {d_dot if d_dot is not None else '-'} | " + " | ".join(values) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_results(rows: Sequence[CellResult], path: Union[str, Path]) -> Path:
    """Save ``capacity.png``: one panel per setting, final loss (log) against S per method,
    the 0.5 "predicts nothing" line, and each method's d_dot (in its legend label, and as a
    dotted vertical line where it falls inside the range of S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(_by_setting(rows).items())
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.6), squeeze=False)
    for ax, (setting, methods) in zip(axes[0], groups):
        all_keys = [s for cells in methods.values() for s in cells]
        lo, hi = min(all_keys), max(all_keys)
        for i, ((method, d_dot), cells) in enumerate(methods.items()):
            color = f"C{i % 10}"
            keys = sorted(cells)
            label = method if d_dot is None else f"{method} (d_dot {d_dot})"
            ax.plot(keys, [max(cells[s].final_loss, 1e-6) for s in keys], "o-", color=color, label=label)
            if d_dot is not None and lo <= d_dot <= hi:
                ax.axvline(d_dot, color=color, linestyle=":", linewidth=1.2)
        ax.axhline(PREDICTS_NOTHING, color="grey", linestyle="--", linewidth=1, label="predicts nothing (0.5)")
        ax.set_yscale("log")
        ax.set_xlabel("number of keys S")
        ax.set_ylabel("final loss")
        title = TITLES.get(setting, f"setting {setting}")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_lines(rows: List[CellResult]) -> List[str]:
    """One line per cell: setting, method, S, loss, steps, why it stopped, seconds."""
    return [
        f"setting {r.setting}  {r.method:<14} S={r.n_keys:<4} Q={r.queries:<4} loss {r.final_loss:.3g}  "
        f"steps {r.steps} ({r.stopped})  {r.seconds:.1f}s"
        for r in rows
    ]
