"""Rules, backends and the dispatcher: the one op contract behind :func:`fastweights.ops.get_op`.

Every op, whatever its rule and backend, is called the same way::

    op(q, k, v, beta=None, *, scale=None, initial_state=None, output_final_state=False,
       cu_seqlens=None, chunk_size=64, normalize=False, eps=1e-6) -> (o, final_state)

in the layout ``[B, T, H, D]`` with a float32 state (float64 for float64 inputs). Three pieces:

- a :class:`RuleSpec` says what a rule computes: its extra per-token inputs, its state, whether
  attention normalisation applies, what the layers should default to, and its ``apply`` function,
  the rule-level work shared by every backend (the sum rule's rate and normalisation column, the
  delta rule's normalised variant);
- a :class:`Backend` is one implementation of a rule (a torch form such as ``chunk``, or a GPU
  kernel) and declares what it runs on: devices, dtypes, native variable-length input, the largest
  ``d_k`` / ``d_v``, whether it computes in float32 whatever the input dtype;
- :class:`Op` (what :func:`get_op` returns) checks the arguments once (the values of the rule's
  bounded inputs included), picks the backend (``impl="auto"``: the highest ``priority`` among
  those that support the inputs), hands it finite inputs only (:mod:`fastweights.ops.nonfinite`:
  non-finite values stay causal), casts to that backend's compute dtype, unpacks ``cu_seqlens``
  only for backends without native support, and records the backend it used in ``op.last_impl``
  (also logged at DEBUG level).

Rules are the public subpackages of :mod:`fastweights.ops` that define ``RULE`` (a :class:`RuleSpec`)
or ``RULES`` (several);
extra backends are the modules of :mod:`fastweights.ops.backends` that define ``BACKENDS``.
Adding a rule is one package, adding a backend one module; :func:`register_rule` and
:func:`register_backend` do the same for code outside this package.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .call import OpCall, Run
from .checks import bounds_error, check_chunk_size, check_inputs, outside_bounds
from .nonfinite import all_finite, find_nonfinite
from .state_shape import MATRIX, StateShape
from .varlen import pack, unpack

log = logging.getLogger(__name__)


ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """One implementation of a rule and what it supports.

    Attributes:
        name: the ``impl`` users pass to :func:`get_op` (``'chunk'``, ``'fla'``, ...).
        rule: the rule it implements.
        run: the implementation (see :data:`Run`).
        devices: device types it runs on.
        dtypes: input dtypes it accepts.
        upcast: it computes in float32 (float64 for float64 inputs) whatever the input dtype; the
            dispatcher casts for it. ``False``: it takes the input dtype as it is (a kernel with
            its own float32 accumulation).
        native_varlen: it reads ``cu_seqlens`` itself; otherwise the dispatcher pads each sequence
            to the longest and packs the output back (right for rules whose state a zero key, value
            and rate leave unchanged; others run sequences one by one: ``varlen.per_sequence``).
        max_d_k, max_d_v: the largest key / value width (``None``: no limit). ``d_v`` counts the
            normalisation column.
        one_token: only ``T = 1`` (a decoding step).
        emulated: it runs here only through an interpreter (Triton's, for tests): slow, so
            ``impl="auto"`` and the benchmarks' defaults leave it out.
        priority: preference of ``impl="auto"`` (higher wins); ``None``: never picked by auto.
        requires: a module that must be importable (an optional dependency), or ``None``.
        tolerance: relative error of its output against the naive form in its most precise
            dtype, as the tests allow.
        check: ``check(q, d_v) -> reason or None``: what else it needs of the inputs (a GPU
            generation, say), asked after the declared limits.
    """

    name: str
    rule: str
    run: Run
    devices: Tuple[str, ...] = ("cpu", "cuda")
    dtypes: Tuple[torch.dtype, ...] = ALL_FLOATS
    upcast: bool = True
    native_varlen: bool = False
    max_d_k: Optional[int] = None
    max_d_v: Optional[int] = None
    one_token: bool = False
    emulated: bool = False
    priority: Optional[int] = None
    requires: Optional[str] = None
    tolerance: float = 1e-9
    check: Optional[Callable[[Tensor, int], Optional[str]]] = None

    def available(self) -> bool:
        """Whether its optional dependency (if any) is installed."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype it computes in for inputs of ``dtype``."""
        if not self.upcast:
            return dtype
        return torch.float64 if dtype == torch.float64 else torch.float32

    def unsupported(self, q: Tensor, d_v: int) -> Optional[str]:
        """Why it cannot run queries ``q`` ``[B, T, H, d_k]`` with ``d_v`` value columns, or ``None``."""
        if not self.available():
            return f"it needs the optional package {self.requires!r}, which is not installed"
        if q.device.type not in self.devices:
            return f"it runs on {'/'.join(self.devices)}, the inputs are on {q.device.type}"
        if q.dtype not in self.dtypes:
            return f"it takes {', '.join(str(d).replace('torch.', '') for d in self.dtypes)}, the inputs are {q.dtype}"
        if self.max_d_k is not None and q.shape[-1] > self.max_d_k:
            return f"its largest d_k is {self.max_d_k}, got d_k = {q.shape[-1]}"
        if self.max_d_v is not None and d_v > self.max_d_v:
            return f"its largest d_v is {self.max_d_v} (normalisation column included), got d_v = {d_v}"
        if self.one_token and q.shape[1] != 1:
            return f"it takes one token (T = 1), got T = {q.shape[1]}; use 'chunk' for sequences"
        if self.check is not None:
            return self.check(q, d_v)
        return None


#: ``apply(run, call) -> (o, S_T)``: a rule's own work around a backend's ``run``, given the checked
#: :class:`~fastweights.ops.call.OpCall` (which it hands on, changed or not, to ``run``).
Apply = Callable[[Run, OpCall], Tuple[Tensor, Optional[Tensor]]]


@dataclass(frozen=True)
class LearnedInput:
    """How layers make one of a rule's extra per-token inputs: ``activation(w_h . x_t + b_h)`` per
    head, with the bias initialised to ``bias``; ``neutral`` is its value that leaves the state
    unchanged (the gated rule's ``g = 0``: no decay), which products of updates use at a token's
    later updates (:mod:`fastweights.ops.products`)."""

    activation: Callable[[Tensor], Tensor]
    bias: float = 0.0
    neutral: float = 0.0


@dataclass(frozen=True)
class RuleSpec:
    """What an update rule computes, and the defaults layers take from it.

    Attributes:
        name: the rule's name (``'sum'``, ``'delta'``).
        summary: its update and read-out, one line.
        inputs: its per-token inputs besides q, k, v, with their meaning (``{"beta": "[B, T, H] rate"}``);
            those other than ``beta`` are keyword arguments of the op. Each is one value per head,
            ``[B, T, H]``, unless named in ``per_channel``.
        per_channel: the inputs given per key channel, ``[B, T, H, d_k]`` (a decay per key
            direction), which layers learn per head and key channel.
        learned: how layers learn its inputs other than ``beta`` from the layer input.
        bounds: the closed interval ``(lo, hi)`` each bounded per-token input must lie in (e.g. a
            rate that keeps the state transition stable); a finite value outside is a
            ``ValueError``. Inputs not named here take any real value.
        state: the shape of its state (:class:`StateShape`; default one ``[d_k, d_v]`` matrix
            per sequence and head).
        normalize: whether it offers attention normalisation (``normalize=True``, one more state
            column holding ``z``).
        key_norm: its keys must be normalised (layers default to sum- or L2-normalised keys).
        learned_rate: layers learn the rate ``beta`` by default (else beta = 1).
        attn_norm: layers normalise by default (when the feature map is non-negative).
        apply: the rule's work around a backend (see :data:`Apply`).
        forms: its own torch backends (the ``naive`` definition among them).
    """

    name: str
    summary: str
    apply: Apply
    forms: Tuple[Backend, ...]
    inputs: Dict[str, str] = field(default_factory=lambda: {"beta": "[B, T, H] rate (None: 1)"})
    per_channel: Tuple[str, ...] = ()
    learned: Dict[str, LearnedInput] = field(default_factory=dict)
    bounds: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    state: StateShape = MATRIX
    normalize: bool = True
    key_norm: bool = False
    learned_rate: bool = False
    attn_norm: bool = False


_RULES: Dict[str, RuleSpec] = {}
_BACKENDS: Dict[Tuple[str, str], Backend] = {}
_DISCOVERED = False


def register_rule(spec: RuleSpec) -> None:
    """Add a rule and its own forms (replacing a rule of the same name)."""
    if not isinstance(spec, RuleSpec):
        raise TypeError(f"a rule must be a RuleSpec, got {type(spec).__name__}")
    _RULES[spec.name] = spec
    for b in spec.forms:
        register_backend(b)


def register_backend(backend: Backend) -> None:
    """Add (or replace) the backend ``backend.name`` of rule ``backend.rule``."""
    if not isinstance(backend, Backend):
        raise TypeError(f"a backend must be a Backend, got {type(backend).__name__}")
    _BACKENDS[(backend.rule, backend.name)] = backend


def _discover() -> None:
    """Register the rule packages of ``fastweights.ops`` and the modules of ``ops.backends`` once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    from . import __path__ as ops_path
    from . import backends

    for info in pkgutil.iter_modules(ops_path, __package__ + "."):
        if info.ispkg and info.name != backends.__name__ and not info.name.rpartition(".")[2].startswith("_"):
            module = importlib.import_module(info.name)
            for spec in getattr(module, "RULES", [getattr(module, "RULE", None)]):
                if spec is not None:
                    register_rule(spec)
    for info in pkgutil.iter_modules(backends.__path__, backends.__name__ + "."):
        for b in getattr(importlib.import_module(info.name), "BACKENDS", ()):
            if b.rule in _RULES:
                register_backend(b)


def list_rules() -> List[str]:
    """The registered update rules."""
    _discover()
    return sorted(_RULES)


def get_rule(rule: str) -> RuleSpec:
    """The :class:`RuleSpec` of ``rule``; ``ValueError`` listing the rules for an unknown one."""
    _discover()
    if rule not in _RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {sorted(_RULES)}")
    return _RULES[rule]


def list_backends(rule: Optional[str] = None, device: Optional[str] = None, available: bool = True) -> List[Backend]:
    """Registered backends, optionally of one rule, running on ``device`` (a type such as
    ``'cuda'``), and (``available``) with their optional dependencies installed."""
    _discover()
    out = [b for (r, _), b in sorted(_BACKENDS.items()) if rule is None or r == rule]
    if device is not None:
        out = [b for b in out if torch.device(device).type in b.devices]
    return [b for b in out if b.available()] if available else out


def list_ops(device: Optional[str] = None) -> List[Tuple[str, str]]:
    """Every available ``(rule, impl)`` pair (on ``device`` if given); ``impl='auto'`` is not listed."""
    return [(b.rule, b.name) for b in list_backends(device=device)]


def select_backend(rule: str, q: Tensor, d_v: int) -> Backend:
    """The backend ``impl="auto"`` uses for queries ``q`` ``[B, T, H, d_k]`` and ``d_v`` value columns:
    for one token (``T = 1``) the rule's form that declares ``one_token`` (its decoding step) where it
    has one that runs the inputs; otherwise the available backend of highest ``priority``."""
    if q.shape[1] == 1:
        steps = [b for b in list_backends(rule) if b.one_token and not b.emulated and b.unsupported(q, d_v) is None]
        if steps:
            return steps[0]
    ranked = [
        b for b in list_backends(rule) if b.priority is not None and not b.emulated and b.unsupported(q, d_v) is None
    ]
    if not ranked:
        raise ValueError(f"no backend of rule {rule!r} runs {q.dtype} inputs of shape {list(q.shape)} on {q.device}")
    return max(ranked, key=lambda b: b.priority)


#: impl names of earlier versions and their names now (``'recurrent'``: the one-token form, now
#: ``'step'``, so that "recurrent" only names the recurrent FWPs); accepted with a DeprecationWarning
RENAMED_IMPLS: Dict[str, str] = {"recurrent": "step"}


def current_impl(impl: str, warn: bool = True) -> str:
    """``impl`` under its current name (see :data:`RENAMED_IMPLS`), with a ``DeprecationWarning``
    when it was renamed and ``warn``."""
    if impl not in RENAMED_IMPLS:
        return impl
    if warn:
        warnings.warn(f"impl {impl!r} is deprecated; use {RENAMED_IMPLS[impl]!r}", DeprecationWarning, stacklevel=3)
    return RENAMED_IMPLS[impl]


def get_op(rule: str, impl: str = "auto") -> "Op":
    """The op of update ``rule`` run by backend ``impl`` (``'auto'``: chosen per call).

    Raises ``ValueError`` naming the valid choices for an unknown rule or impl, or an impl whose
    optional dependency is missing.
    """
    spec = get_rule(rule)
    impl = current_impl(impl)
    if impl == "auto":
        return Op(spec, None)
    if (rule, impl) not in _BACKENDS:
        names = sorted(b.name for b in list_backends(rule, available=False))
        raise ValueError(f"unknown impl {impl!r} for rule {rule!r}; expected 'auto' or one of {names}")
    backend = _BACKENDS[(rule, impl)]
    if not backend.available():
        raise ValueError(
            f"impl {impl!r} for rule {rule!r} needs the optional package {backend.requires!r} "
            f"(pip install 'fastweights[{impl}]')"
        )
    return Op(spec, backend)


def check_impl(rule: str, impl: str) -> None:
    """Raise ``ValueError`` unless ``get_op(rule, impl)`` would succeed (for configs and layers)."""
    get_op(rule, impl)


_DOC = """
    Args:
        q: queries ``[B, T, H, d_k]`` (already feature-mapped).
        k: keys ``[B, T, H, d_k]`` (already feature-mapped and, for the delta rule, normalised).
        v: values ``[B, T, H, d_v]``.
        beta: per-token, per-head learning rate ``[B, T, H]`` (``None`` means 1). A rule may bound it
            (:attr:`RuleSpec.bounds`; the delta rules take ``[0, 2]``, where the transition
            ``I - beta k k^T`` of a unit key stays non-expansive): a finite value outside is a
            ``ValueError``.
        scale: multiplies ``q`` before use (default 1.0: phi is applied by the caller).
        initial_state: fast weights to start from, ``[N, H, d_k, d_v]`` (``d_v + 1`` when
            ``normalize=True``: the last column is ``z``; or ``[N, H, *dims]`` as the rule's
            :attr:`RuleSpec.state` declares) where ``N`` is ``B``, or the number of
            sequences when ``cu_seqlens`` is given. Default: zeros.
        output_final_state: also return the state after the last token.
        cu_seqlens: cumulative sequence lengths ``[N + 1]`` (int) of sequences packed along T
            (then ``B`` must be 1); each sequence starts from its own initial state.
        chunk_size: the chunk length of chunkwise forms (ignored by the others).
        normalize: attention normalisation: keep ``z_t = z_{t-1} + k_t`` in one more state column
            and divide the output by ``z_t . q_t + eps`` (for the rule's exact variant see its package).
        eps: added to the normalisers.

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, d_v]`` in the input dtype; ``final_state`` has
        the shape of ``initial_state`` and is in float32 (float64 for float64 inputs), or ``None`` unless
        ``output_final_state``.

    A NaN or Inf at position ``t`` changes no output before ``t`` (:mod:`fastweights.ops.nonfinite`):
    a non-finite query makes its own output NaN; a non-finite key, value, rate or other per-token
    input makes that sequence's and head's outputs from ``t`` on, and its final state, NaN.
"""


class Op:
    """A rule's op with a fixed backend, or ``impl="auto"`` (``backend=None``): see the module docstring.

    ``last_impl`` names the backend of the latest call.
    """

    def __init__(self, spec: RuleSpec, backend: Optional[Backend]) -> None:
        self.spec, self.backend = spec, backend
        self.impl = backend.name if backend is not None else "auto"
        self.last_impl: Optional[str] = None
        self.__name__ = f"{self.impl}_{spec.name}_rule"
        self.__doc__ = f"{spec.summary} (impl {self.impl!r})\n{_DOC}"

    def __repr__(self) -> str:
        return f"Op(rule={self.spec.name!r}, impl={self.impl!r})"

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Optional[Tensor] = None,
        *,
        scale: Optional[float] = None,
        initial_state: Optional[Tensor] = None,
        output_final_state: bool = False,
        cu_seqlens: Optional[Tensor] = None,
        chunk_size: int = 64,
        normalize: bool = False,
        eps: float = 1e-6,
        **inputs: Optional[Tensor],
    ) -> Tuple[Tensor, Optional[Tensor]]:
        spec = self.spec
        unknown = sorted(set(inputs) - set(spec.inputs))
        if unknown:
            raise TypeError(
                f"rule {spec.name!r} takes no input {unknown[0]!r}; its per-token inputs are {sorted(spec.inputs)}"
            )
        if normalize and not spec.normalize:
            raise ValueError(f"rule {spec.name!r} has no attention normalisation; use normalize=False")
        extra = 1 if normalize else 0
        check_inputs(
            q,
            k,
            v,
            {"beta": beta, **inputs},
            initial_state,
            cu_seqlens,
            per_channel=spec.per_channel,
            state=spec.state,
            state_dv=v.shape[-1] + extra if isinstance(v, Tensor) and v.dim() == 4 else None,
        )
        check_chunk_size(chunk_size)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        d_v = v.shape[-1] + extra
        if self.backend is None:
            backend = select_backend(spec.name, q, d_v)
        else:
            backend = self.backend
            why = backend.unsupported(q, d_v)
            if why is not None:
                raise ValueError(f"impl {backend.name!r} of rule {spec.name!r} cannot run these inputs: {why}")
        self.last_impl = backend.name
        log.debug("%s rule: impl %r for %s %s on %s", spec.name, backend.name, q.dtype, list(q.shape), q.device)
        per_token = {"beta": beta, **inputs}
        outside = outside_bounds(spec.bounds, per_token)  # {name: [B, T, H] bool}
        flags = torch.stack([all_finite(q, k, v, per_token), *(m.any() for m in outside.values())]).tolist()  # one sync
        for (name, mask), bad in zip(outside.items(), flags[1:]):
            if bad:
                raise bounds_error(spec.name, name, spec.bounds[name], per_token[name], mask)
        cu = cu_seqlens.tolist() if cu_seqlens is not None else None
        nonfinite = None if flags[0] else find_nonfinite(q, k, v, per_token, cu)
        if nonfinite is not None:
            q, k, v, per_token = nonfinite.clean(q, k, v, per_token)
        dtype = backend.compute_dtype(q.dtype)
        run = backend.run
        if cu is not None and not backend.native_varlen:
            run = _padded(run, cu)
        cast = {n: x.to(dtype) for n, x in per_token.items() if x is not None}
        call = OpCall(
            q.to(dtype),
            k.to(dtype),
            v.to(dtype),
            beta=cast.pop("beta", None),
            scale=1.0 if scale is None else float(scale),
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size,
            normalize=normalize,
            eps=eps,
            inputs=cast,
        )
        o, s_t = spec.apply(run, call)
        o, s_t = o.to(q.dtype), (s_t if output_final_state else None)
        return nonfinite.poison(o, s_t) if nonfinite is not None else (o, s_t)


def _padded(run: Run, cu: Sequence[int]) -> Run:
    """``run`` without ``cu_seqlens``: packed sequences ``[1, T, ...]`` are padded to ``[N, T_max, ...]``
    at their ends (zero keys, values and rates leave every state unchanged) and the output is
    packed back; a single sequence is a plain batch of one."""

    def padded(call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
        if len(cu) == 2:
            return run(call.replace(cu_seqlens=None))
        o, s_t = run(
            call.replace(
                q=unpack(call.q, cu),  # [N, T_max, H, d_k]
                k=unpack(call.k, cu),
                v=unpack(call.v, cu),
                beta=unpack(call.beta, cu) if call.beta is not None else None,
                cu_seqlens=None,
                inputs={n: unpack(x, cu) for n, x in call.inputs.items()},  # padded with 0 (log decay 0: none)
            )
        )
        return pack(o, cu), s_t

    return padded
