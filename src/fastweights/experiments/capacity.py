"""The capacity experiment (paper section 6.1): methods, the one-layer retrieval model, training.

A *method* names a memory: ``softmax`` (the baseline), or a feature map with an update rule,
``<map>[+<rule>]`` where ``<map>`` is ``linear`` (elu + 1), ``relu``, ``identity``, ``favor-<m>``
(FAVOR+ with m random features) or ``dpfp-<nu>``, and ``<rule>`` an update rule of
:func:`fastweights.ops.list_rules` (``sum``, the default, ``delta``, ``gated_delta``, ...); a final
``+rec`` (or ``rdn`` for ``linear+delta+rec``, the Recurrent Delta Net) makes the memory a
recurrent FWP.

The model has one attention layer of width ``d`` (64 in the paper) over a sequence of ``T``
key/value pairs (see :mod:`fastweights.experiments.retrieval`)::

    x_t = [E key_t ; onehot(value_t)]           # [d + S]   E: key embedding [S, d]
    k_t = phi(W_k x_t),  v_t = onehot(value_t)  # [d_dot], [S]
    q   = phi(W_q E query)                      # [d_dot]
    y   = S_T^T q                               # [S], S_T: fast weights after the T pairs

with the sum rule normalised by ``z_T . q`` and the delta rule using sum-normalised ``phi``
(L2-normalised for signed maps such as ``identity``) and a learned rate
``beta_t = sigmoid(w_beta . x_t)``: the rule's defaults (:class:`fastweights.ops.RuleSpec`), as in
:class:`fastweights.layers.FastWeightAttention`. That layer projects q, k and v from one input,
while here they come from different ones (pairs, query keys, one-hot values), so the model calls
the feature map and the op (:func:`fastweights.ops.get_op`) directly. FAVOR+ features are drawn
once from the cell's seed and kept fixed. Softmax reads ``y = softmax(K q / sqrt(d))^T V``. The
loss is ``0.5 |y - onehot(target)|^2`` per query (0.5: the output predicts nothing).

A recurrent FWP's slow net also reads the memory's previous output (Irie et al., NeurIPS 2021).
While writing, the layer then also reads, with a query of its own, and each write sees that read::

    o_{t-1} = S_{t-1}^T phi(W_r x_{t-1} + R_r o_{t-2})              # [S]: the previous read
    k_t = phi(W_k x_t + R_k o_{t-1}),  beta_t = sigmoid(w_beta . x_t + r_beta . o_{t-1})

(the same for the rule's other learned inputs; ``v_t`` stays the one-hot value). The writes are
then sequential: one step of the rule's one-token form per pair.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..feature_maps import get_feature_map, get_qk_norm
from ..layers.spec import parse_attention
from ..ops import get_op, get_rule, list_backends, list_rules
from .retrieval import RetrievalBatch, RetrievalTask

METHOD_FORMS = ("softmax", "linear", "relu", "identity", "favor-<m>", "dpfp-<nu>")
METHOD_HELP = (
    f"{', '.join(METHOD_FORMS)}, each but softmax optionally with '+<rule>', a rule of {list_rules()} "
    "(default sum; 'delta' = 'linear+delta'), and a final '+rec' for a recurrent FWP ('rdn' = 'linear+delta+rec')"
)


@dataclass(frozen=True)
class Method:
    """A parsed method name: ``rule`` is ``'softmax'`` or an update rule (``'sum'``, ``'delta'``, ...);
    ``recurrent``: the slow net also reads the memory's previous output (a recurrent FWP)."""

    name: str
    rule: str
    feature_map: Optional[str] = None
    feature_map_kwargs: Tuple[Tuple[str, int], ...] = ()
    recurrent: bool = False
    beta_max: float = 1.0  #: the largest learned rate (2 with '+neg': negative eigenvalues)

    def d_dot(self, d: int) -> Optional[int]:
        """Size of the memory's key space for width ``d`` (``None`` for softmax, which has no fixed size)."""
        if self.feature_map is None:
            return None
        return get_feature_map(self.feature_map, d, **dict(self.feature_map_kwargs)).out_dim()


def parse_method(name: str) -> Method:
    """Parse ``'dpfp-2+delta'`` into ``Method(rule='delta', feature_map='dpfp', kwargs nu=2)``.

    Raises ``ValueError`` listing the valid forms for anything else.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}")
    try:
        spec = parse_attention(name)
    except ValueError:
        raise ValueError(f"unknown method {name!r}; valid methods: {METHOD_HELP} (e.g. 'dpfp-2+delta')") from None
    if not spec.is_fast_weight:
        return Method(name, "softmax")
    if spec.steps != 1:
        raise ValueError(
            f"method {name!r}: the capacity experiment writes one update per pair; products are not supported"
        )
    method = Method(
        name,
        spec.rule,
        spec.feature_map.name,
        tuple(sorted(spec.feature_map.kwargs.items())),
        recurrent=spec.is_recurrent,
        beta_max=spec.beta_max,
    )
    method.d_dot(64)  # the feature map validates its own arguments (e.g. nu < 2d)
    return method


class RetrievalModel(nn.Module):
    """One attention layer that stores ``T`` key/value pairs and answers ``Q`` queries.

    Args:
        method: a :class:`Method` (or its name).
        n_keys: ``S``, the size of the key and of the value vocabulary.
        d: width of the key embedding and of the projected keys and queries (64 in the paper).
        seed: seed of the FAVOR+ random features (unused by other maps).
    """

    def __init__(self, method: Method | str, n_keys: int, d: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.method = parse_method(method) if isinstance(method, str) else method
        self.n_keys, self.d = n_keys, d
        self.embed = nn.Embedding(n_keys, d)
        self.key_proj = nn.Linear(d + n_keys, d, bias=False)
        self.query_proj = nn.Linear(d, d, bias=False)
        if self.method.feature_map is None:  # softmax
            return
        spec = get_rule(self.method.rule)
        kwargs = dict(self.method.feature_map_kwargs)
        if self.method.feature_map == "favor":
            kwargs["seed"] = seed
        self.feature_map = get_feature_map(self.method.feature_map, d, **kwargs)
        key_norm = "sum" if self.feature_map.non_negative else "l2"  # sum-normalising signed keys is unstable
        self.qk_norm = get_qk_norm(key_norm if spec.key_norm else None)
        self.beta_proj = nn.Linear(d + n_keys, 1) if spec.learned_rate else None
        self.learned = spec.learned  # the rule's other per-token inputs (the gated delta rule's decay)
        self.per_channel = spec.per_channel  # inputs learned per key channel: d_dot of them
        d_dot = self.feature_map.out_dim()
        self.input_projs = nn.ModuleDict(
            {name: nn.Linear(d + n_keys, d_dot if name in spec.per_channel else 1) for name in spec.learned}
        )
        for name, proj in self.input_projs.items():
            nn.init.constant_(proj.bias, spec.learned[name].bias)
        self.normalize = spec.attn_norm
        self.read_op = None if spec.state.is_matrix else get_op(spec.name, "auto")  # reads a state of another shape
        if self.method.recurrent:
            self.read_proj = nn.Linear(d + n_keys, d, bias=False)  # W_r: the query of the reads while writing
            widths = {
                "k": d,
                "read": d,
                **({"beta": 1} if spec.learned_rate else {}),
                **{name: self.input_projs[name].out_features for name in spec.learned},
            }
            self.recurrent = nn.ModuleDict({name: nn.Linear(n_keys, w, bias=False) for name, w in widths.items()})  # R
            self.step_op = get_op(spec.name, "step")
        # Sequences here are short (at most a few hundred tokens), where a rule's quadratic form, if
        # it has one, is the cheapest (sum rule, T = 21, batch 32: 1.2 ms fwd+bwd against 3.1 ms chunked).
        quadratic = "parallel" in {b.name for b in list_backends(spec.name)}
        self.op = get_op(spec.name, "parallel" if quadratic else "auto")

    def forward(self, batch: RetrievalBatch) -> Tensor:
        """Scores ``y`` ``[B, Q, S]`` for every query of ``batch``."""
        B, T = batch.keys.shape
        v = F.one_hot(batch.values, self.n_keys).to(self.embed.weight.dtype)  # [B, T, S]
        x = torch.cat([self.embed(batch.keys), v], dim=-1)  # [B, T, d + S]
        k = self.key_proj(x)  # [B, T, d]
        q = self.query_proj(self.embed(batch.queries))  # [B, Q, d]
        if self.method.feature_map is None:  # softmax
            return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [B, Q, S]
        pre = {
            "k": k,
            **({"beta": self.beta_proj(x)} if self.beta_proj is not None else {}),
            **{name: proj(x) for name, proj in self.input_projs.items()},
        }  # [B, T, width]: pre-activations
        if self.method.recurrent:
            S = self._write_recurrent(pre, self.read_proj(x), v)
        else:
            # The T pairs are written (queries zero), then every query reads the final fast weights S_T.
            k, beta, inputs = self._write_inputs(pre)
            _, S = self.op(
                torch.zeros_like(k), k, v[:, :, None], beta, output_final_state=True, normalize=self.normalize, **inputs
            )  # [B, 1, d_dot, S (+1)]
        q = self.feature_map.forward_query(q[:, :, None])  # [B, Q, 1, d_dot]
        if self.qk_norm is not None:
            q = self.qk_norm(q)
        if self.read_op is not None:
            return self._read(q, S)
        y = q[:, :, 0] @ S[:, 0]  # [B, Q, S (+1)]: S_T^T q
        if self.normalize:
            y = y[..., :-1] / (y[..., -1:] + 1e-6)  # the op's normalisation: (S_T^T q) / (z_T . q + eps)
        return y

    def _read(self, q: Tensor, S: Tensor) -> Tensor:
        """The rule's own read-out of a state that is not one matrix: each query ``q: [B, Q, 1, d_dot]``
        is one more token of the op from ``S_T`` that writes nothing (zero key, value and rate, the
        other inputs at their neutral values). Returns ``y: [B, Q, S]``."""
        B, Q = q.shape[:2]
        zeros = q.new_zeros(B, Q, 1)  # [B, Q, 1]
        inputs = {
            name: torch.full((B, Q, 1, q.shape[-1]) if name in self.per_channel else (B, Q, 1), learned.neutral).to(q)
            for name, learned in self.learned.items()
        }
        y, _ = self.read_op(
            q, torch.zeros_like(q), q.new_zeros(B, Q, 1, self.n_keys), zeros, initial_state=S, **inputs
        )  # [B, Q, 1, S]
        return y[:, :, 0]

    def _write_inputs(self, pre: Dict[str, Tensor]) -> Tuple[Tensor, Optional[Tensor], Dict[str, Tensor]]:
        """Pre-activations ``[B, T, width]`` -> the op's keys ``[B, T, 1, d_dot]``, rate ``[B, T, 1]`` (or
        None) and the rule's other inputs ``[B, T, 1]``."""
        k = self.feature_map.forward_key(pre["k"][:, :, None])  # [B, T, 1, d_dot]
        if self.qk_norm is not None:
            k = self.qk_norm(k)
        beta = self.method.beta_max * torch.sigmoid(pre["beta"]) if "beta" in pre else None  # [B, T, 1]
        inputs = {}
        for name in self.input_projs:
            x = self.learned[name].activation(pre[name])  # [B, T, 1], or [B, T, d_dot] per key channel
            inputs[name] = x[:, :, None] if name in self.per_channel else x  # per channel: [B, T, 1, d_dot]
        return k, beta, inputs

    def _write_recurrent(self, pre: Dict[str, Tensor], read: Tensor, v: Tensor) -> Tensor:
        """The writes of a recurrent FWP, one pair at a time: every pre-activation ``[B, T, width]``
        plus ``R o_{t-1}``, then one step of the rule, whose read ``o_t`` feeds the next pair.
        ``read: [B, T, d]`` the read queries' input share, ``v: [B, T, S]``. Returns ``S_T``."""
        B, T, n = v.shape
        S, o = None, v.new_zeros(B, n)  # fast weights (None: empty), o_0 = 0  [B, S]
        pre = {**pre, "read": read}
        for t in range(T):
            now = {name: p[:, t : t + 1] + self.recurrent[name](o)[:, None] for name, p in pre.items()}  # [B, 1, width]
            k, beta, inputs = self._write_inputs(now)
            q = self.feature_map.forward_query(now["read"][:, :, None])  # [B, 1, 1, d_dot]
            if self.qk_norm is not None:
                q = self.qk_norm(q)
            out, S = self.step_op(
                q,
                k,
                v[:, t : t + 1, None],
                beta,
                initial_state=S,
                output_final_state=True,
                normalize=self.normalize,
                **inputs,
            )  # [B, 1, 1, S], [B, 1, d_dot, S (+1)]
            o = out[:, 0, 0]  # [B, S]
        return S


def retrieval_loss(y: Tensor, targets: Tensor) -> Tensor:
    """``mean over queries of 0.5 |y - onehot(target)|^2``; ``y: [B, Q, S]``, ``targets: [B, Q]``."""
    return 0.5 * (y - F.one_hot(targets, y.shape[-1]).to(y.dtype)).pow(2).sum(-1).mean()


@dataclass(frozen=True)
class CapacityTraining:
    """The paper's training rule: Adam, batch 32, until converged, on a plateau or at a step cap.

    Every ``window`` steps the mean training loss of the window is compared with
    ``target_loss`` (converged) and with the best window so far: ``patience`` windows in a row
    without a relative improvement of ``min_improvement`` stop the cell (plateau). The reported
    loss is then measured on ``eval_batches`` fresh batches of the same distribution.
    """

    max_steps: int = 20000
    lr: float = 1e-3
    batch_size: int = 32
    target_loss: float = 1e-3
    window: int = 50
    patience: int = 20
    min_improvement: float = 0.01
    eval_batches: int = 8

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "window", "patience", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "target_loss"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class CellResult:
    """One trained (setting, method, S) cell: what the CSV and JSON rows hold, the whole
    :class:`CapacityTraining` it was trained under included (``max_steps`` to ``eval_batches``)."""

    setting: int
    method: str
    feature_map: str
    rule: str
    d_dot: Optional[int]
    n_keys: int
    queries: int
    d: int
    seed: int
    max_steps: int
    lr: float
    batch_size: int
    target_loss: float
    window: int
    patience: int
    min_improvement: float
    eval_batches: int
    final_loss: float
    steps: int
    seconds: float
    stopped: str


def train_cell(
    method: Method | str,
    setting: int,
    n_keys: int,
    *,
    queries: int = 1,
    d: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    config: CapacityTraining = CapacityTraining(),
    on_step: Optional[Callable[[int, float], None]] = None,
) -> CellResult:
    """Train a fresh :class:`RetrievalModel` on one cell and measure its final loss.

    Model initialisation and training data use ``seed``; the evaluation batches come from a
    separate stream (``seed + 1``) of the same distribution. ``on_step(step, loss)`` is called
    after every optimiser step (e.g. to drive a progress bar).
    """
    method = parse_method(method) if isinstance(method, str) else method
    torch.manual_seed(seed)
    model = RetrievalModel(method, n_keys, d=d, seed=seed).to(device)
    train_data = RetrievalTask(setting, n_keys, queries, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = time.perf_counter()
    best, stale, window_sum, stopped, step = math.inf, 0, 0.0, "max_steps", 0
    model.train()
    while step < config.max_steps:
        batch = train_data.sample(config.batch_size, device)
        loss = retrieval_loss(model(batch), batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = loss.item()
        window_sum += value
        if on_step is not None:
            on_step(step, value)
        if step % config.window:
            continue
        mean, window_sum = window_sum / config.window, 0.0
        if mean <= config.target_loss:
            stopped = "converged"
            break
        if mean < best * (1 - config.min_improvement):
            best, stale = mean, 0
        else:
            stale += 1
            if stale >= config.patience:
                stopped = "plateau"
                break
    final = mean_retrieval_loss(model, RetrievalTask(setting, n_keys, queries, seed=seed + 1), config, device)
    return CellResult(
        setting=setting,
        method=method.name,
        feature_map=method.feature_map or "softmax",
        rule=method.rule,
        d_dot=method.d_dot(d),
        n_keys=n_keys,
        queries=queries,
        d=d,
        seed=seed,
        **dataclasses.asdict(config),
        final_loss=final,
        steps=step,
        seconds=round(time.perf_counter() - start, 2),
        stopped=stopped,
    )


@torch.no_grad()
def mean_retrieval_loss(
    model: RetrievalModel, task: RetrievalTask, config: CapacityTraining, device: str | torch.device = "cpu"
) -> float:
    """Mean retrieval loss of ``model`` over ``config.eval_batches`` batches of ``task``."""
    model.eval()
    losses = []
    for _ in range(config.eval_batches):
        batch = task.sample(config.batch_size, device)
        losses.append(retrieval_loss(model(batch), batch.targets).item())
    model.train()
    return sum(losses) / len(losses)
