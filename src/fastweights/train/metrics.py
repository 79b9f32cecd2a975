"""A run's ``metrics.csv`` (and TensorBoard when installed) and its loss plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Union

from ..files.atomic import atomic_write, atomic_write_text, naming_os_errors

METRICS_FILE = "metrics.csv"
LOSS_PLOT = "loss.png"
METRICS_FIELDS = ["step", "lr", "train_loss", "val_loss", "tokens_per_s", "elapsed_s", "val_protocol"]
_ADDED_FIELDS = ("val_protocol",)  # absent from the metrics of runs written before it


def read_metrics(out_dir: Union[str, Path]) -> List[Dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (empty list when there is none)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(rows: List[Dict[str, str]], path: Path) -> Path:
    """The training and validation loss of ``metrics.csv`` rows against the step, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [int(r["step"]) for r in rows],
        [float(r["train_loss"]) for r in rows],
        lw=1,
        label="train (mean since the last row)",
    )
    val = [r for r in rows if r.get("val_loss")]
    protocol = next((r.get("val_protocol") for r in val if r.get("val_protocol")), "")
    ax.plot(
        [int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label=f"validation {protocol}".strip()
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


class Metrics:
    """Appends rows to ``metrics.csv`` (and TensorBoard when installed) on the main process."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = read_metrics(out_dir) if resume_step is not None else []
        # drop rows a killed run wrote past its checkpoint, and a row it was killed (or ran out of disk) writing
        rows = [
            r
            for r in rows
            if all(r.get(k) is not None for k in METRICS_FIELDS if k not in _ADDED_FIELDS)
            and r["step"].isdigit()
            and int(r["step"]) <= (resume_step or 0)
        ]
        lines = [",".join(METRICS_FIELDS)] + [",".join(r.get(k) or "" for k in METRICS_FIELDS) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, val_protocol: Optional[str] = None, **values: Optional[float]) -> None:
        if not self.enabled:
            return
        row = [str(step)] + ["" if values.get(k) is None else repr(float(values[k])) for k in METRICS_FIELDS[1:-1]]
        row.append(val_protocol or "")
        with naming_os_errors(self.path), open(self.path, "a") as f:
            f.write(",".join(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
