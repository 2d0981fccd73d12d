"""The window operations of ELAN's fast path (:mod:`~elan_arch.archs.elan_fast`), each in one place.

* :func:`pixels_to_windows` / :func:`windows_to_pixels`: the cyclic roll and window
  partition of each channel group as one row gather with a precomputed pixel order
  (:func:`window_order`), and the inverse as one row scatter; each is the other's backward.
* :func:`window_attention`: ``softmax(Q Q^T) V`` per window; the maps a sharing GMSA reuses
  are handed over as :class:`SharedAttention`.
* :func:`gmsa_attention`: all of a GMSA's groups, from its ``project_inp`` output to the attention
  output, either as the three steps above or as the fused kernels of
  :mod:`~elan_arch.archs.window_kernels` (CUDA, Triton), which never write the windows or the maps.

The hand-written autograd functions follow the rules of :mod:`~elan_arch.archs.fast_ops`
(float32/float64, plain operations under ``torch.compile``, a trace or autocast).
"""
from __future__ import annotations

import os
import time
from functools import lru_cache
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from elan_arch.archs import window_kernels
from elan_arch.archs.fast_ops import custom_functions_ok, needs_autograd, plain_ops

# --------------------------------------------------------------------------------------- windows

def _window_order(h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    if rolled:
        rows, cols = (rows + ws // 2) % h, (cols + ws // 2) % w
    index = rows.view(h // ws, ws, 1, 1) * w + cols.view(1, 1, w // ws, ws)  # (h/ws, ws, w/ws, ws)
    return index.permute(0, 2, 1, 3).reshape(-1)


@lru_cache(maxsize=64)
def _batch_window_order(batch: int, h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    order = _window_order(h, w, ws, rolled, device)
    return (torch.arange(batch, device=device).view(-1, 1) * (h * w) + order).view(-1)


def window_order(batch: int, h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    """Row indices of the (batch * h * w) pixels of ``batch`` row-major (h, w) maps, listed image by
    image and window by window (``window_partition`` order).

    With ``rolled`` the windows are those of the maps cyclically rolled by (-ws/2, -ws/2), so
    gathering these rows is roll + partition, and scattering back to them is window reverse +
    the opposite roll. Cached per shape in eager mode; computed inside the graph under
    ``torch.compile`` (which then folds it to a constant).
    """
    if torch.compiler.is_compiling():
        return _batch_window_order.__wrapped__(batch, h, w, ws, rolled, device)
    return _batch_window_order(batch, h, w, ws, rolled, device)


def _gather(x: Tensor, orders: Tuple[Tensor, ...], widths: Tuple[int, ...]) -> Tuple[Tensor, ...]:
    groups, c = [], 0
    for order, width in zip(orders, widths):
        groups.append(x[:, c:c + width].index_select(0, order))
        c += width
    return tuple(groups)


def _scatter(groups: Tuple[Optional[Tensor], ...], orders: Tuple[Tensor, ...], widths: Tuple[int, ...]) -> Tensor:
    ref = next(g for g in groups if g is not None)
    out = ref.new_empty(ref.shape[0], sum(widths))
    c = 0
    for group, order, width in zip(groups, orders, widths):
        if group is None:  # a group without gradient
            out[:, c:c + width] = 0
        else:
            out[:, c:c + width].index_copy_(0, order, group)
        c += width
    return out


class _GatherWindows(torch.autograd.Function):
    """Channel group i of ``x`` (P, sum c_i) gathered in the row order ``orders[i]``; backward scatters."""

    @staticmethod
    def forward(x: Tensor, orders: Tuple[Tensor, ...], widths: Tuple[int, ...]) -> Tuple[Tensor, ...]:  # type: ignore[override]
        return _gather(x, orders, widths)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.orders, ctx.widths = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tuple[Tensor, None, None]:  # type: ignore[override]
        return _ScatterWindows.apply(ctx.orders, ctx.widths, *grads), None, None


class _ScatterWindows(torch.autograd.Function):
    """The inverse (and adjoint) of :class:`_GatherWindows`; backward gathers."""

    @staticmethod
    def forward(orders: Tuple[Tensor, ...], widths: Tuple[int, ...], *groups: Tensor) -> Tensor:  # type: ignore[override]
        return _scatter(groups, orders, widths)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.orders, ctx.widths = inputs[0], inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        return (None, None) + _GatherWindows.apply(grad, ctx.orders, ctx.widths)


def pixels_to_windows(x: Tensor, orders: List[Tensor], widths: List[int]) -> Tuple[Tensor, ...]:
    """Split the channels of ``x`` (P, sum c_i), P = batch * pixels, into groups and gather group i
    in the row order ``orders[i]`` (:func:`window_order`: roll + window partition): (P, c_i) each.

    The orders are permutations, so the backward is the exact inverse, :func:`windows_to_pixels`
    (``index_copy_``, no zero-filled scatter-add). Under ``torch.compile`` (whose tracer breaks the
    graph at these multi-output functions) the plain gathers are traced and the compiler derives
    the backward."""
    if torch.compiler.is_compiling():
        return _gather(x, tuple(orders), tuple(widths))
    return _GatherWindows.apply(x, tuple(orders), tuple(widths))


def windows_to_pixels(groups: List[Tensor], orders: List[Tensor]) -> Tensor:
    """The inverse of :func:`pixels_to_windows`: (P, c_i) each -> (P, sum c_i), one preallocated
    output that every group is ``index_copy_``-ed into (no ``torch.cat``). Under ``torch.compile``:
    the gathers by the inverse orders, concatenated, for the compiler to fuse."""
    if torch.compiler.is_compiling():
        return torch.cat([g.index_select(0, torch.argsort(order)) for g, order in zip(groups, orders)], dim=-1)
    return _ScatterWindows.apply(tuple(orders), tuple(g.shape[-1] for g in groups), *groups)


# ------------------------------------------------------------------------------------- attention

def _materialise_maps(q: Tensor) -> bool:
    """Whether attention maps are materialised (and shared as maps) rather than computed by
    ``scaled_dot_product_attention`` (and shared as queries, recomputed by the sharing GMSA).

    On the CPU training with maps beats SDPA's flash kernel (whose CPU backward is slow); in inference
    the faster form depends on the CPU, the window size and the thread count (SDPA's CPU kernel has a
    cost per window and per thread that small windows do not repay on some CPUs), so it is measured
    (:func:`cpu_inference_maps`). On CUDA, SDPA's fused kernels need head sizes that ELAN lacks
    (20 in ELAN-light, 60 in ELAN); zero-padded to a multiple of 8 they are accepted but slower than
    maps, as the math fallback is: their tiles are far longer than ELAN's 16- and 64-token windows.
    The measurements: docs/performance.md ("The fast path's operations").
    """
    if q.is_cuda or torch.is_grad_enabled() or q.dtype == torch.float16:
        return True
    return cpu_inference_maps(q)


#: ``ELAN_CPU_ATTENTION``: ``maps`` or ``sdpa`` forces the form of CPU inference; unset (or ``auto``): measured.
ATTENTION_ENV = 'ELAN_CPU_ATTENTION'
_CPU_FORMS: Dict[Tuple[int, int, torch.dtype, int], bool] = {}


def _maps_attention(q: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    """``softmax(q q^T) @ v`` and the maps, without autograd's functions. float16/bfloat16 inputs: logits,
    softmax, maps and their product with ``v`` in float32 (ELAN's logits are unscaled: float16 overflows,
    bfloat16's 8-bit significand would round logits of tens by tenths), the output in ``v``'s dtype."""
    low = q.dtype in (torch.float16, torch.bfloat16)
    qf = q.float() if low else q
    maps = torch.bmm(qf, qf.transpose(1, 2))
    if plain_ops() or needs_autograd(q, v):  # autograd records the softmax (under autocast, say)
        maps = maps.softmax(dim=-1)
    else:  # in place: no second (N, L, L) buffer
        maps = torch.ops.aten._softmax.out(maps, -1, False, out=maps)
    return _apply_maps(maps, v), maps


def _apply_maps(maps: Tensor, v: Tensor) -> Tensor:
    """``maps @ v`` in the maps' dtype, returned in ``v``'s."""
    return torch.bmm(maps, v.to(maps.dtype)).to(v.dtype)


def cpu_inference_maps(q: Tensor) -> bool:
    """Whether CPU inference on windows like ``q`` (N, L, Cq) runs materialised maps rather than SDPA.

    ``ELAN_CPU_ATTENTION=maps|sdpa`` decides; otherwise both forms are timed once per (tokens, channels,
    dtype, threads), interleaved, on up to 16384 tokens of ``q`` itself: the maps (plus the sharing GMSA's
    one product with them) against SDPA twice (the sharing GMSA recomputes it). The faster is kept for the
    process. Both compute the same function.
    """
    forced = os.environ.get(ATTENTION_ENV, 'auto').lower()
    if forced in ('maps', 'sdpa'):
        return forced == 'maps'
    key = (q.shape[1], q.shape[2], q.dtype, torch.get_num_threads())
    if key not in _CPU_FORMS:
        sample = q[:max(1, 16384 // q.shape[1])].contiguous()
        _, maps = _maps_attention(sample, sample)
        forms = {True: lambda: (_maps_attention(sample, sample), _apply_maps(maps, sample)),
                 False: lambda: [F.scaled_dot_product_attention(sample, sample, sample, scale=1.0) for _ in 'ab']}
        times = {form: float('inf') for form in forms}
        for _ in range(3):
            for form, fn in forms.items():
                start = time.perf_counter()
                fn()
                times[form] = min(times[form], time.perf_counter() - start)
        _CPU_FORMS[key] = times[True] < times[False]
    return _CPU_FORMS[key]


class SharedAttention(NamedTuple):
    """The attention a computing GMSA hands to the sharing GMSAs of its ELAB, for one channel
    group: the (N, L, L) maps where they are materialised (:func:`_materialise_maps`), else the
    (N, L, Cq) queries to recompute them from."""
    maps: Optional[Tensor]
    queries: Optional[Tensor]


class _Attention(torch.autograd.Function):
    """``maps = softmax(q q^T)`` and ``maps @ v`` with a backward that accumulates the sharing GMSAs'
    gradient of the maps into the matrix product (``baddbmm``) and runs the softmax backward in place,
    instead of autograd's separate sums and fresh (N, L, L) buffers. Same formulas as autograd's."""

    @staticmethod
    def forward(q: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        maps = torch.bmm(q, q.transpose(1, 2))
        maps = torch.ops.aten._softmax.out(maps, -1, False, out=maps)
        return torch.bmm(maps, v), maps

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], inputs[1], output[1])

    @staticmethod
    def backward(ctx, grad_y: Optional[Tensor], grad_maps: Optional[Tensor]):  # type: ignore[override]
        q, v, maps = ctx.saved_tensors
        if grad_y is None and grad_maps is None:
            return None, None
        grad_v = None if grad_y is None else torch.bmm(maps.transpose(1, 2), grad_y)
        if grad_y is None:
            grad_s = grad_maps.clone()
        elif grad_maps is None:
            grad_s = torch.bmm(grad_y, v.transpose(1, 2))
        else:  # the engine's buffer of the sharing GMSAs' gradients, used by nothing else
            grad_s = grad_maps.baddbmm_(grad_y, v.transpose(1, 2))
        torch.ops.aten._softmax_backward_data.out(grad_s, maps, -1, maps.dtype, grad_input=grad_s)
        grad_q = torch.bmm(grad_s, q).baddbmm_(grad_s.transpose(1, 2), q)
        return grad_q, grad_v


def window_attention(v: Tensor, q: Optional[Tensor] = None,
                     shared: Optional[SharedAttention] = None) -> Tuple[Tensor, SharedAttention]:
    """``softmax(q @ q^T) @ v`` per window, unscaled as ELAN's GMSA.

    Args:
        v: (N, L, Cv) window values.
        q: (N, L, Cq) window queries (= keys) of a computing GMSA.
        shared: Instead of ``q``, for a sharing GMSA: what the computing GMSA's call returned.

    Returns:
        (N, L, Cv), and the :class:`SharedAttention` for the sharing GMSAs.

    * Materialised maps: two ``bmm`` around a softmax (:class:`_Attention` under autograd for
      float32/float64 outside compiled graphs); float16/bfloat16 logits, softmax and maps in float32
      (ELAN's unscaled logits overflow float16).
    * Otherwise (CPU inference where :func:`cpu_inference_maps` measured it faster):
      ``scaled_dot_product_attention(q, q, v, scale=1)``, a fused kernel that never writes the maps.
    """
    if shared is not None:
        if shared.maps is not None:
            return _apply_maps(shared.maps, v), shared
        q = shared.queries
    assert q is not None, 'window_attention needs queries or a SharedAttention'
    if not _materialise_maps(q):
        return F.scaled_dot_product_attention(q, q, v, scale=1.0), SharedAttention(None, q)
    if needs_autograd(q, v) and custom_functions_ok(q) and v.dtype == q.dtype:
        y, maps = _Attention.apply(q, v)
        return y, SharedAttention(maps, None)
    y, maps = _maps_attention(q, v)
    return y, SharedAttention(maps, None)


#: What a computing GMSA hands to the sharing GMSAs of its ELAB: a :class:`SharedAttention` per group,
#: or, from the fused kernels, its whole ``project_inp`` output (the queries to recompute the maps from).
AttentionState = Union[List[SharedAttention], Tensor]


def gmsa_attention(proj: Tensor, orders: List[Tensor], window_sizes: Sequence[int], split: Sequence[int],
                   shared: Optional[AttentionState], fused: bool) -> Tuple[Tensor, AttentionState]:
    """Window attention of all groups of a GMSA, in pixel order.

    Args:
        proj: (P, sum(split)) the ``project_inp`` output, one row per pixel (P = batch * pixels).
        orders: Per group, :func:`window_order` of its window size (with the roll of shifted blocks).
        window_sizes, split: The GMSA's window size and ``project_inp`` channels per group.
        shared: None for a computing GMSA (each group: queries, then values); for a sharing GMSA
            (values only), what the computing GMSA's call returned.
        fused: Use :mod:`~elan_arch.archs.window_kernels` (the caller checks
            :func:`~elan_arch.archs.window_kernels.available`).

    Returns:
        (P, C) the groups' outputs side by side, and the state for the sharing GMSAs.
    """
    if fused:
        groups = window_kernels.gmsa_groups(window_sizes, split, computing=shared is None)
        q_source = proj if shared is None else shared
        assert isinstance(q_source, Tensor), 'a fused sharing GMSA needs a fused computing GMSA'
        return window_kernels.fused_window_attention(q_source, proj, orders, groups), q_source
    outputs, states = [], []
    for idx, (ws, tokens) in enumerate(zip(window_sizes, pixels_to_windows(proj, orders, list(split)))):
        tokens = tokens.view(-1, ws * ws, tokens.shape[-1])
        if shared is None:
            q, v = tokens.chunk(2, dim=-1)
            y, state = window_attention(v, q=q)
        else:
            assert isinstance(shared, list), 'a sharing GMSA on the bmm form needs a computing GMSA on it'
            y, state = window_attention(tokens, shared=shared[idx])
        outputs.append(y.view(proj.shape[0], -1))
        states.append(state)
    return windows_to_pixels(outputs, orders), states
