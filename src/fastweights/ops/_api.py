"""The one calling contract shared by every fast-weight op, and its input checks.

Every form of every rule (``naive``, ``chunk``, ``recurrent``, ``parallel``) is a *core* function
that only does the math on clean tensors::

    core(q, k, v, beta, S0, chunk_size) -> (o, S_T)
        q, k : [B, H, T, d_k]   (already scaled, compute dtype)
        v    : [B, H, T, d_v]
        beta : [B, H, T] or None
        S0   : [B, H, d_k, d_v] (compute dtype)
        o    : [B, H, T, d_v],  S_T : [B, H, d_k, d_v]

:func:`make_op` wraps a core into the public signature

    ``op(q, k, v, beta=None, *, scale=None, initial_state=None, output_final_state=False,
    cu_seqlens=None, chunk_size=64, ...) -> (o, final_state)``

and does everything the forms have in common exactly once: argument checks with clear errors,
``scale``, the compute dtype (float32, or float64 for float64 inputs), the ``[B, T, H, D]`` layout,
packed variable-length sequences (``cu_seqlens``) and, for the sum rule, the learning rate
``beta`` and attention normalisation.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

Core = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, int], Tuple[Tensor, Tensor]]

_SIGNATURE_DOC = """
    Args:
        q: queries ``[B, T, H, d_k]`` (already feature-mapped).
        k: keys ``[B, T, H, d_k]`` (already feature-mapped and, for the delta rule, normalised).
        v: values ``[B, T, H, d_v]``.
        beta: per-token, per-head learning rate ``[B, T, H]``. Delta rule: the rate of the
            update (``None`` means 1). Sum rule: scales the written value (``None`` means 1).
        scale: multiplies ``q`` before use (default 1.0: phi is applied by the caller).
        initial_state: fast weights to start from, ``[N, H, d_k, d_v]`` (``d_v + 1`` when
            ``normalize=True``: the last column is ``z``) where ``N`` is ``B``, or the number of
            sequences when ``cu_seqlens`` is given. Default: zeros.
        output_final_state: also return the state after the last token.
        cu_seqlens: cumulative sequence lengths ``[N + 1]`` (int) of sequences packed along T
            (then ``B`` must be 1); each sequence starts from its own initial state.
        chunk_size: the chunk length of the ``chunk`` form (ignored by the others).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, d_v]`` in the input dtype; ``final_state`` is
        ``[N, H, d_k, d_v]`` in float32 (float64 for float64 inputs), or ``None`` unless
        ``output_final_state``.
"""

_SUM_EXTRA_DOC = """        normalize: attention normalisation: also keep ``z_t = z_{t-1} + k_t`` and return
            ``o_t / (z_t . q_t + eps)``. The state then carries ``z`` as an extra last column.
        eps: added to the normaliser.
"""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state is kept in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Optional[Tensor],
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    state_dv: Optional[int] = None,
) -> None:
    """Validate the op arguments; raise ``TypeError``/``ValueError`` naming the bad one.

    ``state_dv`` is the last dimension the initial state must have (``d_v`` unless the op
    adds columns, as the normalised sum rule does).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, D] (4 dims), got {_shape(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has dtype {q.dtype}; they must match")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; they must match")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {_shape(q)}, got {_shape(k)}")
    B, T, H, d_k = q.shape
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must have shape [B, T, H, d_v] = [{B}, {T}, {H}, d_v] like q, got {_shape(v)}"
        )
    if T == 0:
        raise ValueError("the sequence is empty: q, k, v have T = 0 tokens")
    if min(B, H, d_k, v.shape[-1]) == 0:
        raise ValueError(f"q {_shape(q)} and v {_shape(v)} must have non-zero B, H and D")
    if beta is not None:
        if not isinstance(beta, Tensor):
            raise TypeError(f"beta must be a torch.Tensor or None, got {type(beta).__name__}")
        if not beta.is_floating_point():
            raise TypeError(f"beta must be a floating-point tensor, got dtype {beta.dtype}")
        if beta.shape != (B, T, H):
            raise ValueError(f"beta must have shape [B, T, H] = [{B}, {T}, {H}], got {_shape(beta)}")
        if beta.device != q.device:
            raise ValueError(f"beta is on {beta.device} but q is on {q.device}; they must match")
    n_seq = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
            got = cu_seqlens.dtype if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__
            raise TypeError(f"cu_seqlens must be an int32/int64 tensor of cumulative lengths, got {got}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must have shape [N + 1] with N >= 1, got {_shape(cu_seqlens)}")
        if B != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed along T, so B must be 1, got B = {B}")
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != T or any(b <= a for a, b in zip(cu, cu[1:])):
            raise ValueError(
                f"cu_seqlens must start at 0, strictly increase and end at T = {T}, got {cu}"
            )
        n_seq = len(cu) - 1
    if initial_state is not None:
        if not isinstance(initial_state, Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor or None, got {type(initial_state).__name__}")
        if not initial_state.is_floating_point():
            raise TypeError(f"initial_state must be floating point, got dtype {initial_state.dtype}")
        dv = v.shape[-1] if state_dv is None else state_dv
        if initial_state.shape != (n_seq, H, d_k, dv):
            raise ValueError(
                f"initial_state must have shape [N, H, d_k, d_v] = [{n_seq}, {H}, {d_k}, {dv}], "
                f"got {_shape(initial_state)}"
            )
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}; they must match")


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _unpack(x: Tensor, cu: list[int]) -> Tensor:
    """``[1, T, ...]`` packed -> ``[N, T_max, ...]`` zero-padded at the end of each sequence."""
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    t_max = max(lengths)
    out = x.new_zeros((len(lengths), t_max) + tuple(x.shape[2:]))
    for i, (a, n) in enumerate(zip(cu, lengths)):
        out[i, :n] = x[0, a : a + n]
    return out


def _repack(x: Tensor, cu: list[int]) -> Tensor:
    """Inverse of :func:`_unpack`: ``[N, T_max, ...]`` -> ``[1, T, ...]``."""
    return torch.cat([x[i, : b - a] for i, (a, b) in enumerate(zip(cu, cu[1:]))], dim=0)[None]


def run_core(
    core: Core,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Optional[Tensor],
    scale: Optional[float],
    initial_state: Optional[Tensor],
    output_final_state: bool,
    cu_seqlens: Optional[Tensor],
    chunk_size: int,
    post: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Cast, lay out, (un)pack and call ``core``; the inputs are already checked.

    ``post`` maps the core's output (compute dtype, before the cast back) to the op's output.
    """
    in_dtype = q.dtype
    cdt = compute_dtype(in_dtype)
    cu = cu_seqlens.tolist() if cu_seqlens is not None else None
    if cu is not None and len(cu) > 2:
        # Zero keys (and zero rates) at the padded ends leave every state unchanged.
        q, k, v = _unpack(q, cu), _unpack(k, cu), _unpack(v, cu)
        beta = _unpack(beta, cu) if beta is not None else None
    else:
        cu = None
    s = 1.0 if scale is None else float(scale)
    qc = q.to(cdt).transpose(1, 2)  # [B, H, T, d_k]
    if s != 1.0:
        qc = qc * s
    kc = k.to(cdt).transpose(1, 2)  # [B, H, T, d_k]
    vc = v.to(cdt).transpose(1, 2)  # [B, H, T, d_v]
    bc = beta.to(cdt).transpose(1, 2) if beta is not None else None  # [B, H, T]
    B, H, _, d_k = kc.shape
    if initial_state is None:
        s0 = kc.new_zeros(B, H, d_k, vc.shape[-1])
    else:
        s0 = initial_state.to(cdt)
    with torch.autocast(q.device.type, enabled=False):  # the op keeps its own precision (float32 state)
        o, s_t = core(qc, kc, vc, bc, s0, chunk_size)
    if post is not None:
        o = post(o)
    o = o.transpose(1, 2).to(in_dtype)  # [B, T, H, d_v]
    if cu is not None:
        o = _repack(o, cu)
    return o, (s_t if output_final_state else None)


def make_op(core: Core, rule: str, form: str, summary: str) -> Callable[..., Tuple[Tensor, Optional[Tensor]]]:
    """Wrap ``core`` in the public op signature for ``rule`` ('sum' or 'delta')."""
    if rule == "delta":

        def op(
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
        ) -> Tuple[Tensor, Optional[Tensor]]:
            check_inputs(q, k, v, beta, initial_state, cu_seqlens)
            _check_chunk_size(chunk_size)
            return run_core(core, q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size)

        op.__doc__ = summary + _SIGNATURE_DOC
    elif rule == "sum":

        def op(  # type: ignore[misc]
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
        ) -> Tuple[Tensor, Optional[Tensor]]:
            dv = v.shape[-1] + 1 if normalize and isinstance(v, Tensor) and v.dim() == 4 else None
            check_inputs(q, k, v, beta, initial_state, cu_seqlens, state_dv=dv)
            _check_chunk_size(chunk_size)
            cdt = compute_dtype(q.dtype)
            if beta is not None:
                v = v.to(cdt) * beta.to(cdt)[..., None]  # [B, T, H, d_v]: the written value is beta_t v_t
            post = None
            if normalize:
                # z is one more value column that is always 1: S_aug = [S | z].
                v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [B, T, H, d_v + 1]

                def post(o: Tensor) -> Tensor:
                    return o[..., :-1] / (o[..., -1:] + eps)  # [..., d_v]: o_t / (z_t . q_t + eps)

            return run_core(core, q, k, v, None, scale, initial_state, output_final_state, cu_seqlens, chunk_size, post)

        op.__doc__ = summary + _SIGNATURE_DOC + _SUM_EXTRA_DOC
    else:
        raise ValueError(f"rule must be 'sum' or 'delta', got {rule!r}")
    op.__name__ = f"{form}_{rule}_rule"
    op.__qualname__ = op.__name__
    op.core = core  # type: ignore[attr-defined]
    return op
