"""Synthetic tasks that tell update rules apart: state tracking (parity, sums mod 5) and
associative recall past the state's capacity (MQAR).

A task draws batches of token sequences with their targets (:class:`Task`); a small language
model with the attention under test (:class:`~fastweights.models.LanguageModel`, no positional
embedding, so that it can read sequences of any length) is trained on short sequences and then
tested on longer ones, or on more key-value pairs than it was trained with:

- ``parity``: bits ``x_1..x_T``; the target at every position is the parity of the bits so far,
  ``x_1 + ... + x_t mod 2``. Tested on the last position of longer sequences (chance: 1/2). A
  delta rule whose rate reaches 2 can flip the state along a key (a reflection, eigenvalue -1) at
  every 1 and solve it at any length; with a rate in ``[0, 1]`` its transitions have no negative
  eigenvalue and it cannot (Grazzi et al., ICLR 2025).
- ``modular``: digits ``0..4``; the target is the running sum mod 5 (chance: 1/5). Counting mod 5
  needs rotations, products of at least two reflections per token: DeltaProduct
  (``deltaproduct-<n>+neg``, :mod:`fastweights.ops.products`) with more updates per token does better.
- ``mqar``: multi-query associative recall (Arora et al., 2023, "Zoology"): ``N`` key-value pairs
  with distinct keys, each pair one token (as in the paper's retrieval experiment, so that one
  layer can store it), then the ``N`` keys again in random order; the target of each query is its
  value (chance: 1/V). Tested as ``N`` grows past the ``d_k x d_v`` state, where the sum rule's
  retrievals interfere; the delta rule was published to do better there (it overwrites), but every
  token of this format writes before it reads, queries included, and in the quick preset the delta
  rule learns the task far more slowly than the sum rule (docs/synthetic.md).

The size of a test is the sequence length (parity, modular) or the number of pairs (mqar). Every
batch is drawn on the CPU from a seeded generator, so a seed gives the same data everywhere.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..layers.spec import parse_attention
from ..models import LanguageModel, LMConfig

IGNORE = -100  #: the target of a position that is not scored

#: ``sample(batch_size, size, generator, train) -> (ids [B, L], targets [B, L])``; targets are
#: ``IGNORE`` where nothing is scored. ``train``: the training targets (every position that has one);
#: else only what the test scores.
Sampler = Callable[[int, int, torch.Generator, bool], Tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Task:
    """A synthetic task: its vocabulary, what its size means, its chance level and its sampler."""

    name: str
    summary: str
    vocab_size: int
    size_name: str  #: what a test's size counts ("length" or "pairs")
    chance: float
    sample: Sampler
    rules: Tuple[str, ...]  #: the attention variants whose comparison shows the task's finding


@dataclass(frozen=True)
class SynthPreset:
    """How a task is trained and tested: sizes, schedule and model."""

    train_sizes: Tuple[int, int]  #: every training batch has one size drawn in [lo, hi]
    test_sizes: Tuple[int, ...]
    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 2
    d_ff: int = 128
    qk_norm: str = "l2"  #: unit keys: then a rate of 2 makes I - beta k k^T an exact reflection
    eval_batches: int = 4

    @property
    def train_length(self) -> int:
        """The largest training size."""
        return self.train_sizes[1]


@dataclass
class RuleResult:
    """One rule on one task: accuracy (median over seeds) and per seed, by test size."""

    task: str
    rule: str
    train_length: int
    size_name: str
    accuracy: Dict[int, float]
    accuracy_per_seed: Dict[int, List[float]]
    seeds: List[int]
    steps: int
    final_loss: float
    seconds: float
    chance: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        d["accuracy_per_seed"] = {str(k): v for k, v in self.accuracy_per_seed.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RuleResult":
        d = dict(d)
        d["accuracy"] = {int(k): v for k, v in d["accuracy"].items()}
        d["accuracy_per_seed"] = {int(k): v for k, v in d["accuracy_per_seed"].items()}
        return cls(**d)


# ---------------------------------------------------------------------------- the tasks
def _running_sum_mod(modulus: int) -> Sampler:
    """Digits ``0..modulus-1``; targets: the running sum mod ``modulus`` (the last one only in tests)."""

    def sample(batch_size: int, size: int, generator: torch.Generator, train: bool) -> Tuple[Tensor, Tensor]:
        ids = torch.randint(modulus, (batch_size, size), generator=generator)  # [B, L]
        targets = ids.cumsum(1) % modulus  # [B, L]
        if not train:
            targets[:, :-1] = IGNORE
        return ids, targets

    return sample


MQAR_KEYS, MQAR_VALUES = 64, 16  #: keys and values of mqar; a pair token is ``key * MQAR_VALUES + value``


def _mqar(batch_size: int, size: int, generator: torch.Generator, train: bool) -> Tuple[Tensor, Tensor]:
    """``size`` pairs with distinct keys, one token each, then their keys in random order; each
    query's target is its value (ids ``0..V-1`` used as class labels)."""
    if size > MQAR_KEYS:
        raise ValueError(f"mqar has {MQAR_KEYS} keys; {size} pairs cannot have distinct keys")
    keys = torch.rand(batch_size, MQAR_KEYS, generator=generator).argsort(1)[:, :size]  # [B, N] distinct
    values = torch.randint(MQAR_VALUES, (batch_size, size), generator=generator)  # [B, N]
    order = torch.rand(batch_size, size, generator=generator).argsort(1)  # [B, N]
    queries = keys.gather(1, order)  # [B, N]
    pairs = keys * MQAR_VALUES + values  # [B, N]
    query_ids = MQAR_KEYS * MQAR_VALUES + queries  # [B, N]: query tokens after the pair tokens
    ids = torch.cat([pairs, query_ids], 1)  # [B, 2N]
    targets = torch.cat([torch.full_like(pairs, IGNORE), values.gather(1, order)], 1)  # [B, 2N]
    return ids, targets


_TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Add (or replace) a task; ``fastweights synth --task NAME`` and :func:`run_task` then take it."""
    if not isinstance(task, Task):
        raise TypeError(f"a task must be a Task, got {type(task).__name__}")
    _TASKS[task.name] = task


def get_task(name: str) -> Task:
    """The registered task ``name`` (a ``ValueError`` naming the others otherwise)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(_TASKS)}")
    return _TASKS[name]


def list_tasks() -> List[str]:
    """The registered task names."""
    return sorted(_TASKS)


register_task(
    Task(
        "parity",
        "parity of a bit string, tested on longer strings",
        2,
        "length",
        1 / 2,
        _running_sum_mod(2),
        rules=("delta", "delta+neg"),
    )
)
register_task(
    Task(
        "modular",
        "running sum of digits mod 5, tested on longer sequences",
        5,
        "length",
        1 / 5,
        _running_sum_mod(5),
        rules=("delta+neg", "deltaproduct-2+neg", "deltaproduct-3+neg"),
    )
)
register_task(
    Task(
        "mqar",
        "multi-query associative recall, tested with more key-value pairs",
        MQAR_KEYS * MQAR_VALUES + MQAR_KEYS,
        "pairs",
        1 / MQAR_VALUES,
        _mqar,
        rules=("identity", "identity+delta"),
    )
)

#: (task, preset) -> its settings; "quick" finishes in minutes on two CPU cores, "full" is for a GPU
PRESETS: Dict[Tuple[str, str], SynthPreset] = {
    ("parity", "quick"): SynthPreset((2, 16), (16, 32, 64, 128), steps=600),
    ("parity", "full"): SynthPreset((3, 40), (40, 80, 160, 320), steps=10000, d_model=128, n_layers=2, n_heads=4),
    ("modular", "quick"): SynthPreset((2, 16), (16, 32, 64, 128), steps=1000),
    ("modular", "full"): SynthPreset((3, 40), (40, 80, 160, 320), steps=10000, d_model=128, n_layers=2, n_heads=4),
    ("mqar", "quick"): SynthPreset((2, 32), (4, 8, 16, 24, 32, 48, 64), steps=2000, n_heads=2),
    ("mqar", "full"): SynthPreset((2, 64), (8, 16, 32, 48, 64), steps=10000, d_model=128, n_heads=4),
}


def get_synth_preset(task: str, preset: str) -> SynthPreset:
    """The settings of ``preset`` for ``task`` (a ``ValueError`` naming the choices otherwise)."""
    get_task(task)
    if (task, preset) not in PRESETS:
        raise ValueError(
            f"task {task!r} has no preset {preset!r}; expected one of {sorted(p for t, p in PRESETS if t == task)}"
        )
    return PRESETS[(task, preset)]


# ---------------------------------------------------------------------------- training and testing
def build_model(task: Task, rule: str, preset: SynthPreset) -> LanguageModel:
    """The model a rule is measured with: ``preset``'s size, the rule's attention, no positions."""
    return LanguageModel(
        LMConfig(
            vocab_size=task.vocab_size,
            d_model=preset.d_model,
            n_layers=preset.n_layers,
            n_heads=preset.n_heads,
            d_ff=preset.d_ff,
            context=max(preset.test_sizes + preset.train_sizes) * 2,
            pos_emb="none",
            qk_norm=preset.qk_norm,
            attention=parse_attention(rule),
        )
    )


@torch.no_grad()
def accuracy(
    model: LanguageModel,
    task: Task,
    size: int,
    batches: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """The fraction of scored positions predicted right, over ``batches`` test batches of ``size``."""
    was_training = model.training
    model.eval()
    right = total = 0
    for _ in range(batches):
        ids, targets = task.sample(batch_size, size, generator, False)  # [B, L], [B, L]
        logits, _, _ = model(ids.to(device))  # [B, L, vocab]
        scored = targets != IGNORE  # [B, L]
        right += (logits.argmax(-1).cpu()[scored] == targets[scored]).sum().item()
        total += scored.sum().item()
    model.train(was_training)
    return right / total


def train_rule(
    task: Task, rule: str, preset: SynthPreset, seed: int, device: torch.device, progress: bool = True
) -> Tuple[Dict[int, float], float]:
    """Train one model of ``rule`` on ``task`` and test it: ``({size: accuracy}, final training loss)``.

    AdamW (weight decay 0.01), linear warm-up over the first 10% of the steps then cosine decay to
    0, gradients clipped at norm 1; each step draws one training size uniformly in
    ``preset.train_sizes``."""
    torch.manual_seed(seed)
    model = build_model(task, rule, preset).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=0.01)
    warmup = max(1, preset.steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, preset.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    data = torch.Generator().manual_seed(seed)
    lo, hi = preset.train_sizes
    loss_avg = math.nan
    bar = tqdm(
        range(preset.steps), desc=f"{task.name} {rule} seed {seed}", disable=not progress, leave=False, unit="step"
    )
    for _ in bar:
        size = int(torch.randint(lo, hi + 1, (), generator=data))
        ids, targets = task.sample(preset.batch_size, size, data, True)  # [B, L], [B, L]
        _, loss, _ = model(ids.to(device), targets.to(device), return_logits=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_avg:.3f}", refresh=False)
    test = torch.Generator().manual_seed(10_000 + seed)  # the same test data for every rule
    scores = {
        size: accuracy(model, task, size, preset.eval_batches, preset.batch_size, test, device)
        for size in preset.test_sizes
    }
    return scores, loss_avg


def run_task(
    task_name: str,
    rules: Optional[Sequence[str]] = None,
    preset_name: str = "quick",
    seeds: int = 1,
    device: str = "cpu",
    preset: Optional[SynthPreset] = None,
    progress: bool = True,
    on_result: Optional[Callable[[RuleResult], None]] = None,
) -> List[RuleResult]:
    """Train and test every rule of ``rules`` (default: the task's own) on ``task_name`` over seeds
    ``0..seeds-1``; ``on_result`` is called after each rule (e.g. to save what is done)."""
    task = get_task(task_name)
    preset = preset or get_synth_preset(task_name, preset_name)
    rules = list(rules or task.rules)
    for rule in rules:
        parse_attention(rule)  # every name is checked before anything is trained
    dev = torch.device(device)
    results = []
    for rule in rules:
        t0 = time.perf_counter()
        per_seed: Dict[int, List[float]] = {size: [] for size in preset.test_sizes}
        losses = []
        for seed in range(seeds):
            scores, loss = train_rule(task, rule, preset, seed, dev, progress)
            for size, acc in scores.items():
                per_seed[size].append(acc)
            losses.append(loss)
        result = RuleResult(
            task=task.name,
            rule=rule,
            train_length=preset.train_length,
            size_name=task.size_name,
            accuracy={size: statistics.median(accs) for size, accs in per_seed.items()},
            accuracy_per_seed=per_seed,
            seeds=list(range(seeds)),
            steps=preset.steps,
            final_loss=statistics.median(losses),
            seconds=time.perf_counter() - t0,
            chance=task.chance,
        )
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# ---------------------------------------------------------------------------- reports
def format_table(results: Sequence[RuleResult]) -> List[str]:
    """Markdown rows: the final training loss and the accuracy by test size, one row per rule
    (median over seeds, and the min-max range when there are several); a size past the training
    sizes says how many times the longest training size it is."""
    if not results:
        return []
    sizes = sorted({s for r in results for s in r.accuracy})
    first = results[0]

    def head(size: int) -> str:
        ratio = size / first.train_length
        return f"{first.size_name} {size}" + (f" ({ratio:g}x)" if ratio > 1 else "")

    rows = ["| attention | training loss | " + " | ".join(head(s) for s in sizes) + " |"]
    rows.append("|---|---:|" + "---:|" * len(sizes))
    for r in results:
        cells = []
        for s in sizes:
            accs = r.accuracy_per_seed.get(s, [])
            cell = f"{r.accuracy[s]:.3f}" if s in r.accuracy else ""
            if len(accs) > 1:
                cell += f" ({min(accs):.2f}-{max(accs):.2f})"
            cells.append(cell)
        rows.append(f"| {r.rule} | {r.final_loss:.3f} | " + " | ".join(cells) + " |")
    return rows


def plot_results(results: Sequence[RuleResult], path, title: str) -> None:
    """Accuracy against test size, one line per rule (the band: min-max over seeds), chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        sizes = sorted(r.accuracy)
        line = ax.plot(sizes, [r.accuracy[s] for s in sizes], "o-", label=r.rule)[0]
        if len(r.seeds) > 1:
            lo = [min(r.accuracy_per_seed[s]) for s in sizes]
            hi = [max(r.accuracy_per_seed[s]) for s in sizes]
            ax.fill_between(sizes, lo, hi, color=line.get_color(), alpha=0.2)
    if results:
        ax.axhline(results[0].chance, ls="--", color="grey", lw=1, label="chance")
        ax.axvline(results[0].train_length, ls=":", color="grey", lw=1, label="longest training size")
        ax.set_xlabel(f"test {results[0].size_name}")
    ax.set_xscale("log", base=2)
    sizes = sorted({s for r in results for s in r.accuracy})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


__all__ = [
    "IGNORE",
    "PRESETS",
    "RuleResult",
    "SynthPreset",
    "Task",
    "accuracy",
    "build_model",
    "format_table",
    "get_synth_preset",
    "get_task",
    "list_tasks",
    "plot_results",
    "register_task",
    "run_task",
    "train_rule",
]
