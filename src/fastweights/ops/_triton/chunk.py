"""The Triton chunk forms as one ``autograd.Function`` for the sum, delta and gated delta rules.

Inputs are the public ``[B, T, H, D]`` tensors (or ``[1, T, H, D]`` with ``cu_seqlens``), used in
place as ``[tokens, H, D]``. Saved for the backward: the inputs, ``W``, ``U`` and ``L^-1`` (delta
rule), i.e. O(T (d_k + d_v + C)) per head; the per-chunk states are recomputed by the forward scan,
so no state per token (or per chunk) outlives a call. Each kernel is launched with the first of
:func:`.launch.plan`'s candidates that fits the GPU (:mod:`.fit`, as ``fastweights bench kernels``
reports it).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.errors import OutOfResources

from ..call import OpCall
from . import backward, fit, forward
from .launch import KernelConfig, kernel_chunk, preferred

KERNELS = {
    name: getattr(module, name)
    for module in (forward, backward)
    for name in ("wy_fwd", "state_fwd", "output_fwd", "dv_local", "state_bwd", "grads_qk", "wy_bwd")
    if hasattr(module, name)
}


def capability(device: torch.device) -> int:
    """Compute capability of ``device`` as one number (90 for sm_90); 90 for a CPU tensor (the interpreter)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


class Layout:
    """Sequences, chunks and kernel configurations of one call."""

    def __init__(
        self,
        cu: List[int],
        H: int,
        K: int,
        V: int,
        chunk_size: int,
        delta: bool,
        gated: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        cap = capability(device)
        BT = kernel_chunk(dtype, K, chunk_size, cap)  # the kernels' own: the plan uses the same
        chunks = [(n, j) for n, (a, b) in enumerate(zip(cu, cu[1:])) for j in range(-(-(b - a) // BT))]
        offsets = [0]
        for a, b in zip(cu, cu[1:]):
            offsets.append(offsets[-1] + -(-(b - a) // BT))
        self.N, self.NT, self.H, self.K, self.V, self.BT = len(cu) - 1, len(chunks), H, K, V, BT
        self.cu = torch.tensor(cu, dtype=torch.int32, device=device)
        self.chunk_indices = torch.tensor(chunks, dtype=torch.int32, device=device)  # [NT, 2]
        self.chunk_offsets = torch.tensor(offsets, dtype=torch.int32, device=device)  # [N + 1]
        self.rule = (delta, gated, dtype, K, V, BT, cap)
        self.on_gpu = device.type == "cuda"
        self.preferred = preferred(delta, dtype, K, V, BT, cap, gated)

    def config(self, name: str) -> KernelConfig:
        """Kernel ``name``'s configuration: on a GPU the first candidate of the plan that fits (measured
        once per shape, :mod:`.fit`), under the interpreter the preferred one."""
        if not self.on_gpu:
            return self.preferred[name]
        config, resources = fit.chosen(name, *self.rule)
        if resources is not None and not resources.fits:
            delta, gated, dtype, K, V, _, cap = self.rule
            raise ValueError(fit.unfit(delta, gated, dtype, K, V, cap, self.BT) + "; use impl='chunk' for these inputs")
        return config

    def launch(self, name: str, grid: Tuple[int, ...], *args, **flags) -> None:
        """Runs kernel ``name`` on ``grid`` with its configuration and the per-call ``flags``."""
        config = self.config(name)
        try:
            KERNELS[name][grid](*args, **flags, **config.kwargs())
        except OutOfResources as e:  # a configuration the offline check missed: say which and what limit
            raise ValueError(
                f"Triton kernel {name} ({config.constexprs}, num_warps={config.num_warps}, "
                f"num_stages={config.num_stages}) needs {e.required:,} of {e.name}, the GPU allows "
                f"{e.limit:,}; use impl='chunk' for these inputs"
            ) from None

    def value_blocks(self, name: str) -> int:
        return triton.cdiv(self.V, self.config(name).constexprs["BV"])

    def key_blocks(self, name: str) -> int:
        return triton.cdiv(self.K, self.config(name).constexprs["BK"])


def _flat(x: Tensor) -> Tensor:
    """``[B, T, H, D]`` -> contiguous ``[B*T, H, D]`` (a view when already contiguous)."""
    return x.reshape(-1, *x.shape[2:]).contiguous()


def _scan_forward(
    lay: Layout,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    w: Optional[Tensor],
    u: Optional[Tensor],
    h0: Optional[Tensor],
    delta: bool,
    final: bool,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The chunk states ``[NT, H, K, V]`` (float32), ``V'`` (``v`` itself for the sum rule) and the final state."""
    hs = k.new_empty(lay.NT, lay.H, lay.K, lay.V, dtype=torch.float32)
    vn = torch.empty_like(v) if delta else v
    ht = k.new_empty(lay.N, lay.H, lay.K, lay.V, dtype=torch.float32) if final else None
    lay.launch(
        "state_fwd",
        (lay.value_blocks("state_fwd"), lay.N * lay.H),
        k,
        v,
        g,
        w if delta else k,
        u if delta else v,
        vn,
        h0 if h0 is not None else hs,
        hs,
        ht if final else hs,
        lay.chunk_offsets,
        lay.cu,
        lay.H,
        lay.K,
        lay.V,
        HAS_H0=h0 is not None,
        STORE_FINAL=final,
    )
    return hs, vn, ht


class TritonChunk(torch.autograd.Function):
    """``(q, k, v, beta, g, h0, scale, cu, chunk_size, delta, final) -> (o, S_T)`` on ``[B, T, H, D]``
    tensors; ``g`` the gated rule's log decays ``[B, T, H]`` (None: no decay)."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Optional[Tensor],
        g: Optional[Tensor],
        h0: Optional[Tensor],
        scale: float,
        cu: List[int],
        chunk_size: int,
        delta: bool,
        final: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        B, T, H, K = q.shape
        V = v.shape[-1]
        gated = g is not None
        lay = Layout(cu, H, K, V, chunk_size, delta, gated, q.device, q.dtype)
        qf, kf, vf = _flat(q), _flat(k), _flat(v)
        bf = beta.reshape(-1, H).contiguous() if delta else None  # [tokens, H]
        gf = g.reshape(-1, H).float().contiguous() if gated else None  # [tokens, H] float32
        g_arg = gf if gated else kf  # kernels compiled without GATED never read it
        w = u = linv = None
        if delta:
            w, u = torch.empty_like(kf), torch.empty_like(vf)
            linv = kf.new_empty(kf.shape[0], H, lay.BT, dtype=torch.float32)  # [tokens, H, BT]: rows of L^-1
            lay.launch("wy_fwd", (lay.NT, H), kf, vf, bf, g_arg, w, u, linv, lay.chunk_indices, lay.cu, H, K, V)
        hs, vn, ht = _scan_forward(lay, kf, vf, g_arg, w, u, h0, delta, final)
        o = torch.empty_like(vf)
        lay.launch(
            "output_fwd",
            (lay.value_blocks("output_fwd"), lay.NT, H),
            qf,
            kf,
            g_arg,
            vn,
            hs,
            o,
            scale,
            lay.chunk_indices,
            lay.cu,
            H,
            K,
            V,
        )
        ctx.save_for_backward(qf, kf, vf, bf, gf, h0, w, u, linv)
        ctx.lay, ctx.scale, ctx.delta, ctx.shape, ctx.g_dtype = lay, scale, delta, (B, T), g.dtype if gated else None
        return o.view(B, T, H, V), ht

    @staticmethod
    @once_differentiable
    def backward(ctx, do: Optional[Tensor], dht: Optional[Tensor]):
        qf, kf, vf, bf, gf, h0, w, u, linv = ctx.saved_tensors
        lay, scale, delta = ctx.lay, ctx.scale, ctx.delta
        H, K, V = lay.H, lay.K, lay.V
        gated = gf is not None
        g_arg = gf if gated else kf
        dof = _flat(do) if do is not None else torch.zeros_like(vf)
        hs, vn, _ = _scan_forward(lay, kf, vf, g_arg, w, u, h0, delta, False)
        dvn = torch.empty_like(vf)  # P^T dO, then dV' (= dV for the sum rule)
        lay.launch("dv_local", (lay.NT, H), qf, kf, g_arg, dof, dvn, scale, lay.chunk_indices, lay.cu, H, K, V)
        dhs = torch.empty_like(hs)
        dh0 = kf.new_empty(lay.N, H, K, V, dtype=torch.float32)
        lay.launch(
            "state_bwd",
            (lay.value_blocks("state_bwd"), lay.N * H),
            qf,
            kf,
            g_arg,
            w if delta else kf,
            dof,
            dvn,
            dht.contiguous() if dht is not None else dh0,
            dhs,
            dh0,
            scale,
            lay.chunk_offsets,
            lay.cu,
            H,
            K,
            V,
            HAS_DHT=dht is not None,
        )
        dq, dk = torch.empty_like(qf), torch.empty_like(kf)
        # delta rules: dK's attention and state part and -dW in float32, completed by wy_bwd
        dkp = kf.new_empty(kf.shape, dtype=torch.float32) if delta else None
        ndw = torch.empty_like(dkp) if delta else None
        nkb = lay.key_blocks("grads_qk")
        dgl = hs.new_empty(lay.NT, H, nkb) if gated else hs  # <G_{n+1}, S_{n+1}> per chunk and key block
        lay.launch(
            "grads_qk",
            (nkb, lay.NT, H),
            qf,
            kf,
            g_arg,
            vn,
            dvn,
            hs,
            dhs,
            dof,
            dq,
            dk,
            dkp if delta else hs,
            ndw if delta else hs,
            dgl,
            scale,
            lay.chunk_indices,
            lay.cu,
            H,
            K,
            V,
        )
        dbeta = dg = None
        if delta:
            dv, dbeta = torch.empty_like(vf), torch.empty_like(bf)
            dg = torch.empty_like(gf) if gated else None
            lay.launch(
                "wy_bwd",
                (lay.NT, H),
                qf,
                kf,
                vf,
                bf,
                g_arg,
                linv,
                dvn,
                ndw,
                dkp,
                dq,
                dgl,
                dk,
                dv,
                dbeta,
                dg if gated else dgl,
                lay.chunk_indices,
                lay.cu,
                H,
                K,
                V,
                nkb,
            )
        else:
            dv = dvn
        B, T = ctx.shape
        grads = [x.view(B, T, H, -1) for x in (dq, dk, dv)]
        return (
            *grads,
            dbeta.view(B, T, H) if delta else None,
            dg.view(B, T, H).to(ctx.g_dtype) if gated else None,
            dh0 if h0 is not None else None,
            None,
            None,
            None,
            None,
            None,
        )


def run(call: OpCall, delta: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The op contract's ``run`` for the sum (``delta=False``, ``beta`` ignored), delta or gated delta
    rule (``call.inputs["g"]``: log decays ``[B, T, H]``; absent: none)."""
    q, beta = call.q, call.beta
    B, T = q.shape[:2]
    cu = call.cu_seqlens.tolist() if call.cu_seqlens is not None else [b * T for b in range(B + 1)]
    if delta and beta is None:
        beta = q.new_ones(q.shape[:3])  # [B, T, H]
    h0 = call.initial_state.float().contiguous() if call.initial_state is not None else None
    g = call.inputs.get("g")
    return TritonChunk.apply(
        q,
        call.k,
        call.v,
        beta if delta else None,
        g,
        h0,
        call.scale,
        cu,
        call.chunk_size,
        delta,
        call.output_final_state,
    )
