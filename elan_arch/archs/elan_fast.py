"""The fast path of :class:`~elan_arch.archs.elan_arch.ELAN`, for training (autograd) and inference.

The same function as the module tree's reference arithmetic (``ELAN.forward`` with
``fast_training=False`` / ``fast_inference=False``), with the same gradients, reorganised
for speed. Every idea lives in
one function here, called by both training and inference:

* Everything runs in ``channels_last`` memory (NHWC), where oneDNN's 1x1 and
  depthwise convolutions are several times faster on CPU than in NCHW, and where a
  channel group of a feature map is a plain strided view.
* :class:`Shift`: the fixed one-pixel shift of the channel groups is the module's
  depthwise kernel as a convolution, and its backward is the same convolution with the
  kernel flipped (the opposite shift), instead of a convolution backward. Measured on
  the 2-core CPU (1 thread, 8x32x32, 120 channels): forward 0.63 ms, backward 0.63 ms
  against 1.8 ms for ``conv2d``'s input gradient and 1.1 ms for slice copies.
* BatchNorm: the module itself in train mode (batch statistics, running-statistics
  updates exactly as ``nn.BatchNorm2d``), folded into its 1x1 conv in eval mode.
* :func:`pixels_to_windows` / :func:`windows_to_pixels`: the cyclic roll and the window
  partition of a channel group are one ``index_select`` with a precomputed pixel order
  (:func:`window_order`); the inverse is one ``index_copy_`` into the output of all groups
  (no ``torch.roll``, no ``torch.cat``); each is the other's backward.
* :func:`window_attention`: ``softmax(Q Q^T) V`` per window, by the kernel measured fastest
  (see :func:`_materialise_maps`): materialised maps, which a sharing GMSA reuses as the
  reference does, or SDPA's fused kernel, where a sharing GMSA recomputes the attention from
  the computing GMSA's queries (gradients reach the queries from both layers).
* Without autograd, residual additions and the ReLU are in place.

The functions read the modules' own parameters and buffers, so the state_dict, the
parameter count and checkpoints are those of the module tree.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:  # the arch module imports this one
    from .elan_arch import ELAB, ELAN, GMSA, LFE, ShiftConv2d


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """Weight and bias of the single conv equal to ``bn(conv(x))`` with BatchNorm in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight, bias


class Shift(torch.autograd.Function):
    """The fixed shift: a depthwise 3x3 convolution whose kernels each hold a single one.

    The adjoint of correlating with a one-hot kernel is correlating with the kernel
    rotated by 180 degrees, i.e. the opposite shift: the backward is one more such
    convolution, exact (every output is a single input value or zero).
    Shape: (B, C, H, W) -> (B, C, H, W), memory format kept.
    """

    @staticmethod
    def forward(x: Tensor, kernel: Tensor) -> Tensor:  # type: ignore[override]
        return F.conv2d(x, kernel.to(x.dtype), padding=1, groups=x.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.kernel = inputs[1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        return Shift.apply(grad, ctx.kernel.flip(-2, -1)), None


def conv1x1(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """A 1x1 convolution as one matrix product over the pixels of channels_last ``x``.

    (B, Cin, H, W) channels_last -> (B, Cout, H, W) channels_last; its input gradient is
    channels_last too (convolution kernels may return NCHW gradients, which then cost a
    layout change in the next depthwise shift).
    """
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias)
    return out.permute(0, 3, 1, 2)


def shift_conv(m: ShiftConv2d, x: Tensor) -> Tensor:
    """``m(x)``: the fixed shift, then the 1x1 conv. (B, Cin, H, W) -> (B, Cout, H, W), channels_last."""
    m = m.shift_conv
    return conv1x1(Shift.apply(x, m.weight), m.conv1x1.weight, m.conv1x1.bias)


def _inplace_ok() -> bool:
    """In-place ReLU and residual additions only without autograd: under autograd they would hit
    permuted views (the 1x1 convs' outputs), whose in-place backward copies the gradient into
    NCHW order and slows every later layer down."""
    return not torch.is_grad_enabled()


def lfe(m: LFE, x: Tensor) -> Tensor:
    """``x + m(x)`` for an :class:`LFE`. (B, C, H, W) -> (B, C, H, W)."""
    y = shift_conv(m.conv0, x)
    y = shift_conv(m.conv1, y.relu_() if _inplace_ok() else y.relu())
    return y.add_(x) if _inplace_ok() else y + x


def _window_order(h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    if rolled:
        rows, cols = (rows + ws // 2) % h, (cols + ws // 2) % w
    index = rows.view(h // ws, ws, 1, 1) * w + cols.view(1, 1, w // ws, ws)  # (h/ws, ws, w/ws, ws)
    return index.permute(0, 2, 1, 3).reshape(-1)


_cached_window_order = lru_cache(maxsize=64)(_window_order)


def window_order(h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    """Row-major pixel indices of an (h, w) map, listed window by window (``window_partition`` order).

    With ``rolled`` the windows are those of the map cyclically rolled by (-ws/2, -ws/2),
    so gathering these indices is roll + partition, and scattering back to them is
    window reverse + the opposite roll. Cached per shape in eager mode; computed inside
    the graph under ``torch.compile`` (which then folds it to a constant).
    """
    if torch.compiler.is_compiling():
        return _window_order(h, w, ws, rolled, device)
    return _cached_window_order(h, w, ws, rolled, device)


def _gather(x: Tensor, orders: Tuple[Tensor, ...], widths: Tuple[int, ...]) -> Tuple[Tensor, ...]:
    groups, c = [], 0
    for order, width in zip(orders, widths):
        groups.append(x[:, :, c:c + width].index_select(1, order))
        c += width
    return tuple(groups)


def _scatter(groups: Tuple[Optional[Tensor], ...], orders: Tuple[Tensor, ...], widths: Tuple[int, ...]) -> Tensor:
    ref = next(g for g in groups if g is not None)
    out = ref.new_empty(ref.shape[0], ref.shape[1], sum(widths))
    c = 0
    for group, order, width in zip(groups, orders, widths):
        if group is None:  # a group without gradient
            out[:, :, c:c + width] = 0
        else:
            out[:, :, c:c + width].index_copy_(1, order, group)
        c += width
    return out


class _GatherWindows(torch.autograd.Function):
    """Channel group i of ``x`` (B, HW, sum c_i) gathered in the pixel order ``orders[i]``; backward scatters."""

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
    """Split the channels of ``x`` (B, HW, sum c_i) into groups and gather group i in the pixel
    order ``orders[i]`` (:func:`window_order`: roll + window partition): (B, HW, c_i) each.

    The pixel orders are permutations, so the backward is the exact inverse,
    :func:`windows_to_pixels` (``index_copy_``, no zero-filled scatter-add). Under ``torch.compile``
    (whose tracer breaks the graph at these multi-output functions) the plain gathers are traced
    and the compiler derives the backward."""
    if torch.compiler.is_compiling():
        return _gather(x, tuple(orders), tuple(widths))
    return _GatherWindows.apply(x, tuple(orders), tuple(widths))


def windows_to_pixels(groups: List[Tensor], orders: List[Tensor]) -> Tensor:
    """The inverse of :func:`pixels_to_windows`: (B, HW, c_i) each -> (B, HW, sum c_i), one
    preallocated output that every group is ``index_copy_``-ed into (no ``torch.cat``). Under
    ``torch.compile``: the gathers by the inverse orders, concatenated, for the compiler to fuse."""
    if torch.compiler.is_compiling():
        return torch.cat([g.index_select(1, torch.argsort(order)) for g, order in zip(groups, orders)], dim=-1)
    return _ScatterWindows.apply(tuple(orders), tuple(g.shape[-1] for g in groups), *groups)


def _materialise_maps(q: Tensor) -> bool:
    """Whether attention maps are materialised (and shared as maps) rather than computed by
    ``scaled_dot_product_attention`` (and shared as queries, recomputed by the sharing GMSA).

    Measured: on the 2-core CPU, training with maps beats SDPA's flash kernel (whose CPU backward
    is slow) and inference with SDPA beats maps. On CUDA, SDPA's fused kernels need head sizes
    that ELAN lacks (20 in ELAN-light, 60 in ELAN); zero-padding q and v to a multiple of 8 gets
    them accepted, but they were slower than maps on an H200 (ELAN-light x4, 480x640, float16:
    71 against 42 ms; training steps of the paper recipes 10-25% slower), as the math fallback
    was before: their tiles are far longer than ELAN's 16- and 64-token windows.
    """
    return q.is_cuda or torch.is_grad_enabled() or q.dtype == torch.float16


class SharedAttention(NamedTuple):
    """The attention a computing GMSA hands to the sharing GMSAs of its ELAB, for one channel
    group: the (N, L, L) maps where they are materialised (:func:`_materialise_maps`), else the
    (N, L, Cq) queries to recompute them from."""
    maps: Optional[Tensor]
    queries: Optional[Tensor]


def window_attention(v: Tensor, q: Optional[Tensor] = None,
                     shared: Optional[SharedAttention] = None) -> Tuple[Tensor, SharedAttention]:
    """``softmax(q @ q^T) @ v`` per window, unscaled as ELAN's GMSA.

    Args:
        v: (N, L, Cv) window values.
        q: (N, L, Cq) window queries (= keys) of a computing GMSA.
        shared: Instead of ``q``, for a sharing GMSA: what the computing GMSA's call returned.

    Returns:
        (N, L, Cv), and the :class:`SharedAttention` for the sharing GMSAs.

    * Materialised maps: two ``bmm`` around a softmax; float16 logits and softmax in float32
      (ELAN's unscaled logits overflow float16).
    * Otherwise (CPU inference): ``scaled_dot_product_attention(q, q, v, scale=1)``, a fused
      kernel that never writes the maps.
    """
    if shared is not None:
        if shared.maps is not None:
            return torch.bmm(shared.maps.to(v.dtype), v), shared
        q = shared.queries
    assert q is not None, 'window_attention needs queries or a SharedAttention'
    if _materialise_maps(q):
        qf = q.float() if q.dtype == torch.float16 else q
        maps = torch.bmm(qf, qf.transpose(1, 2)).softmax(dim=-1)
        return torch.bmm(maps.to(v.dtype), v), SharedAttention(maps, None)
    return F.scaled_dot_product_attention(q, q, v, scale=1.0), SharedAttention(None, q)


def project_inp(m: GMSA, x: Tensor) -> Tensor:
    """``m.project_inp(x)``: 1x1 conv + BatchNorm, with batch statistics (and running-statistics
    updates) when the BatchNorm is in train mode, folded into the conv in eval mode."""
    conv, bn = m.project_inp[0], m.project_inp[1]
    if bn.training:
        return bn(conv1x1(x, conv.weight, conv.bias))
    return conv1x1(x, *fold_batchnorm(conv, bn))


def gmsa(m: GMSA, x: Tensor,
         shared: Optional[List[SharedAttention]]) -> Tuple[Tensor, List[SharedAttention]]:
    """``x + m(x, ...)`` for a :class:`GMSA`, and the attention a sharing GMSA reuses.

    Args:
        x: (B, C, H, W) channels_last, H and W multiples of every window size.
        shared: For a sharing GMSA, the computing GMSA's :class:`SharedAttention` per group.

    Returns:
        (B, C, H, W) channels_last, and this layer's :class:`SharedAttention` per group.
    """
    b, c, h, w = x.shape
    proj = project_inp(m, x).permute(0, 2, 3, 1).reshape(b, h * w, -1)  # a view: NHWC memory
    orders = [window_order(h, w, ws, m.shift, x.device) for ws in m.window_sizes]
    outputs, states = [], []
    for idx, (ws, tokens) in enumerate(zip(m.window_sizes, pixels_to_windows(proj, orders, m.split_chns))):
        tokens = tokens.view(-1, ws * ws, tokens.shape[-1])
        if shared is None:
            q, v = tokens.chunk(2, dim=-1)
            y, state = window_attention(v, q=q)
        else:
            y, state = window_attention(tokens, shared=shared[idx])
        outputs.append(y.view(b, h * w, -1))
        states.append(state)
    out = windows_to_pixels(outputs, orders).view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last
    y = conv1x1(out, m.project_out.weight, m.project_out.bias)
    return (y.add_(x) if _inplace_ok() else y + x), states


def elab(m: ELAB, x: Tensor) -> Tensor:
    """``m(x)`` for an :class:`ELAB`. (B, C, H, W) channels_last -> same."""
    shared = None
    for lfe_m, gmsa_m in zip(m.modules_lfe.values(), m.modules_gmsa.values()):
        x = lfe(lfe_m, x)
        x, shared = gmsa(gmsa_m, x, shared)
    return x


def forward_padded(net: ELAN, x: Tensor) -> Tensor:
    """The body of :meth:`ELAN.forward` on an input already padded to ``net.pad_multiple``.

    Shape: (B, colors, H, W) in [0, 1] -> (B, colors, H*scale, W*scale), contiguous.
    """
    x = x.contiguous(memory_format=torch.channels_last) * net.img_range
    x = net.head(net.sub_mean(x))
    res = x
    for block in net.body:
        x = elab(block, x)
    x = net.add_mean(net.tail(x.add_(res) if _inplace_ok() else x + res))
    return (x.div_(net.img_range) if _inplace_ok() else x / net.img_range).contiguous()
