"""Tables and the plot of a capacity sweep: final loss against S, one line per method.

A cell trained with several seeds is summarised by the median of its final losses and their
min-max range: ``0.00083 (0.00041-0.021)`` in a table, a line with a shaded band in the plot.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

from .capacity import CellResult

PREDICTS_NOTHING = 0.5  # the loss of an output of zeros


TITLES = {
    1: "setting 1: each key once (length S)",
    2: "setting 2: keys repeat (length 2S)",
    3: "setting 3: only the last S/4 pairs asked (length 2S)",
}


def _by_setting(rows: Sequence[CellResult]) -> Dict[int, Dict[Tuple[str, object], Dict[int, List[CellResult]]]]:
    """``{setting: {(method, d_dot): {S: [row of each seed]}}}``, methods in first-seen order."""
    out: Dict[int, Dict[Tuple[str, object], Dict[int, List[CellResult]]]] = {}
    for r in rows:
        out.setdefault(r.setting, {}).setdefault((r.method, r.d_dot), {}).setdefault(r.n_keys, []).append(r)
    return out


def loss_summary(cells: Sequence[CellResult]) -> Tuple[float, float, float]:
    """``(median, min, max)`` of the final losses of one cell's seeds."""
    losses = [r.final_loss for r in cells]
    return statistics.median(losses), min(losses), max(losses)


def format_loss(cells: Sequence[CellResult]) -> str:
    """One cell's final loss: ``0.00083`` for one seed, ``0.00083 (0.00041-0.021)`` (the median and
    the min-max range) for several."""
    median, lo, hi = loss_summary(cells)
    return f"{median:.2g}" if len(cells) == 1 else f"{median:.2g} ({lo:.2g}-{hi:.2g})"


def _seeds(methods: Dict[Tuple[str, object], Dict[int, List[CellResult]]]) -> List[int]:
    """The seeds of one setting's cells (a value of :func:`_by_setting`), sorted."""
    return sorted({r.seed for cells in methods.values() for seeds in cells.values() for r in seeds})


def format_table(rows: Sequence[CellResult]) -> str:
    """Markdown tables (one per setting) of the final loss, methods by S: with several seeds per
    cell, the median and min-max range over the seeds (see :func:`format_loss`)."""
    blocks = []
    for setting, methods in sorted(_by_setting(rows).items()):
        keys = sorted({s for cells in methods.values() for s in cells})
        seeds = _seeds(methods)
        what = (
            "final loss"
            if len(seeds) == 1
            else (f"final loss, median (min-max) over seeds {', '.join(map(str, seeds))}")
        )
        lines = [
            f"setting {setting}: {what} (0.5 = predicts nothing)",
            "",
            "| method | d_dot | " + " | ".join(f"S={s}" for s in keys) + " |",
            "|---|---:|" + "---:|" * len(keys),
        ]
        for (method, d_dot), cells in methods.items():
            values = [format_loss(cells[s]) if s in cells else "" for s in keys]
            lines.append(f"| {method} | {d_dot if d_dot is not None else '-'} | " + " | ".join(values) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def method_colors(rows: Sequence[CellResult]) -> Dict[str, str]:
    """One colour per method name over all ``rows`` (so the same in every panel), in first-seen
    order: matplotlib's ``tab10`` colours, ``tab20`` for more than 10 methods (repeating past 20)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = list(dict.fromkeys(r.method for r in rows))
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: to_hex(palette(i % palette.N)) for i, name in enumerate(names)}


def plot_results(rows: Sequence[CellResult], path: Union[str, Path]) -> Path:
    """Save ``capacity.png``: one panel per setting, final loss (log) against S per method (with
    several seeds: the median, and the min-max range shaded), one colour per method in every panel
    (:func:`method_colors`), the 0.5 "predicts nothing" line, and each method's d_dot (in its
    legend label, and as a dotted vertical line where it falls inside the range of S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(_by_setting(rows).items())
    colors = method_colors(rows)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.6), squeeze=False)
    for ax, (setting, methods) in zip(axes[0], groups):
        all_keys = [s for cells in methods.values() for s in cells]
        lo, hi = min(all_keys), max(all_keys)
        for (method, d_dot), cells in methods.items():
            color = colors[method]
            keys = sorted(cells)
            median, low, high = zip(*(loss_summary(cells[s]) for s in keys))
            label = method if d_dot is None else f"{method} (d_dot {d_dot})"
            ax.plot(keys, [max(m, 1e-6) for m in median], "o-", color=color, label=label)
            if any(len(cells[s]) > 1 for s in keys):
                ax.fill_between(
                    keys,
                    [max(v, 1e-6) for v in low],
                    [max(v, 1e-6) for v in high],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
            if d_dot is not None and lo <= d_dot <= hi:
                ax.axvline(d_dot, color=color, linestyle=":", linewidth=1.2)
        ax.axhline(PREDICTS_NOTHING, color="grey", linestyle="--", linewidth=1, label="predicts nothing (0.5)")
        ax.set_yscale("log")
        ax.set_xlabel("number of keys S")
        seeds = _seeds(methods)
        ax.set_ylabel("final loss" if len(seeds) == 1 else f"final loss (median, min-max of {len(seeds)} seeds)")
        ax.set_title(TITLES.get(setting, f"setting {setting}"))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
