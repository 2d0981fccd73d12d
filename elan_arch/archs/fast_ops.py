"""The operations of ELAN's fast path (:mod:`~elan_arch.archs.elan_fast`), each in one place.

Each is the reference's operation reorganised for speed, with a backward written for it
where autograd's would be slower; each keeps the reference's function and gradients:

* :func:`shift`: the fixed one-pixel shift of the channel groups as the module's one-hot
  depthwise kernel; its backward is the same convolution with the kernel flipped (the
  opposite shift). Measured on the 2-core CPU (1 thread, 8x32x32, 120 channels): 0.63 ms
  forward and backward each, against 1.8 ms for ``conv2d``'s input gradient.
* :func:`linear`: a 1x1 convolution as one matrix product over the pixels of a
  channels_last map, with the bias and the ReLU or the residual addition that follows it
  in the same pass (oneDNN's fused matmul on the CPU: 15-25% less time than ``addmm``
  plus a separate pass, measured on the 2-core CPU); its gradients stay channels_last.
* :func:`pixels_to_windows` / :func:`windows_to_pixels`: the cyclic roll and window
  partition of each channel group as one row gather with a precomputed pixel order
  (:func:`window_order`), and the inverse as one row scatter; each is the other's backward.
* :func:`window_attention`: ``softmax(Q Q^T) V`` per window; the maps a sharing GMSA reuses
  are handed over as :class:`SharedAttention`.

The hand-written autograd functions serve float32 and float64 tensors on any device (oneDNN's fused
matmul: float32 on the CPU); under ``torch.compile``, a trace or autocast, the same formulas run as
plain operations, which the compiler fuses or autocast casts itself.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _has_onednn_linear() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise.default is not None
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _has_onednn_linear()


def _plain_ops() -> bool:
    """Under ``torch.compile`` or a trace: only standard ops (the compiler fuses them itself)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _custom_ok(x: Tensor) -> bool:
    """Whether the hand-written functions below serve ``x``: not under a compiler or a trace, and not
    under autocast (whose precision choices they would bypass), in float32 or float64."""
    return (not _plain_ops() and not torch.is_autocast_enabled(x.device.type)
            and x.dtype in (torch.float32, torch.float64))


def _needs_autograd(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ----------------------------------------------------------------------------------------- shift

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


def shift(x: Tensor, kernel: Tensor) -> Tensor:
    """The fixed one-pixel shift of :class:`Shift`. (B, C, H, W) -> (B, C, H, W)."""
    return Shift.apply(x, kernel)


# ---------------------------------------------------------------------------------------- linear

def pixel_rows(x: Tensor) -> Tensor:
    """(B, C, H, W) channels_last -> (B*H*W, C): one row per pixel, a view of the NHWC memory."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def pixel_map(rows: Tensor, b: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`pixel_rows`: (B*H*W, C) -> (B, C, H, W) channels_last, a view."""
    return rows.view(b, h, w, -1).permute(0, 3, 1, 2)


@lru_cache(maxsize=16)
def _ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.ones(1, n, dtype=dtype, device=device)


def _column_sums(g: Tensor) -> Tensor:
    """``g.sum(0)`` of a (P, C) matrix as a product with a cached row of ones (measured 40% faster
    than ``sum`` on the CPU)."""
    return _ones(g.shape[0], g.dtype, g.device).mm(g).view(-1)


def _linear_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool,
                    residual: Optional[Tensor]) -> Tensor:
    """``x @ weight^T + bias``, then ReLU or ``+ residual``, fused where oneDNN serves ``x``.
    (P, Cin) -> (P, Cout); a new tensor (``residual`` is not modified)."""
    if _ONEDNN_LINEAR and x.device.type == 'cpu' and x.dtype == torch.float32 and _custom_ok(x):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, 'add')
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu' if relu else 'none', [], '')
    y = F.linear(x, weight, bias)
    inplace = not _plain_ops()  # y is new; under a compiler the out-of-place form traces cleaner
    if relu:
        y = y.relu_() if inplace else y.relu()
    if residual is not None:
        y = y.add_(residual) if inplace else y + residual
    return y


class _Linear(torch.autograd.Function):
    """:func:`_linear_forward` with its gradients: ``g @ W``, ``g^T @ x``, column sums of ``g``,
    and ``g`` itself for the residual (ReLU's mask applied first)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],  # type: ignore[override]
                relu: bool) -> Tensor:
        return _linear_forward(x, weight, bias, relu, residual)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, weight, bias, residual, relu = inputs
        ctx.relu, ctx.has_bias, ctx.has_residual = relu, bias is not None, residual is not None
        ctx.save_for_backward(x, weight, output if relu else None)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight, out = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        need = ctx.needs_input_grad
        grad_x = grad.mm(weight) if need[0] else None
        grad_w = grad.t().mm(x) if need[1] else None
        grad_b = _column_sums(grad) if ctx.has_bias and need[2] else None
        return grad_x, grad_w, grad_b, grad if ctx.has_residual else None, None


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool = False,
           residual: Optional[Tensor] = None) -> Tensor:
    """A 1x1 convolution of channels_last ``x``, then ReLU (``relu``) or ``+ residual``.

    Shape: (B, Cin, H, W) channels_last -> (B, Cout, H, W) channels_last; ``weight`` is the
    conv's (Cout, Cin, 1, 1) or (Cout, Cin); ``residual`` (B, Cout, H, W) channels_last. One
    matrix product over the pixels (an NHWC view), so its input gradient is channels_last too
    (convolution kernels may return NCHW gradients, which cost a layout change downstream).
    """
    weight = weight.reshape(weight.shape[0], x.shape[1])
    x2 = pixel_rows(x)
    r2 = None if residual is None else pixel_rows(residual)
    if _needs_autograd(x, weight, bias, r2) and _custom_ok(x):
        y = _Linear.apply(x2, weight, bias, r2, relu)
    else:
        y = _linear_forward(x2, weight, bias, relu, r2)
    return pixel_map(y, x.shape[0], x.shape[2], x.shape[3])


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
      float32/float64 outside compiled graphs); float16 logits and softmax in float32 (ELAN's
      unscaled logits overflow float16).
    * Otherwise (CPU inference): ``scaled_dot_product_attention(q, q, v, scale=1)``, a fused
      kernel that never writes the maps.
    """
    if shared is not None:
        if shared.maps is not None:
            return torch.bmm(shared.maps.to(v.dtype), v), shared
        q = shared.queries
    assert q is not None, 'window_attention needs queries or a SharedAttention'
    if not _materialise_maps(q):
        return F.scaled_dot_product_attention(q, q, v, scale=1.0), SharedAttention(None, q)
    if _needs_autograd(q, v) and _custom_ok(q) and v.dtype == q.dtype:
        y, maps = _Attention.apply(q, v)
        return y, SharedAttention(maps, None)
    qf = q.float() if q.dtype == torch.float16 else q
    maps = torch.bmm(qf, qf.transpose(1, 2)).softmax(dim=-1)
    return torch.bmm(maps.to(v.dtype), v), SharedAttention(maps, None)


# ------------------------------------------------------------------------------------ batch norm

class _BatchNormLinear(torch.autograd.Function):
    """``BatchNorm(x @ W^T + b)`` in train mode (batch statistics) as one matrix product.

    The statistics of ``y = x @ W^T + b`` follow from those of ``x``: ``mean_y = W mean_x + b`` and
    ``var_y = diag(W cov_x W^T)``, with ``cov_x`` a (Cin, Cin) product of the centred input. So
    ``BatchNorm(y) = xc @ (s W)^T + beta`` with ``xc = x - mean_x`` and ``s = gamma / sqrt(var_y + eps)``:
    the normalised output comes out of the matrix product, and ``y`` itself is never written.
    The backward is this formula's exact gradient (derived by hand: two (P, Cin) products more
    than a plain linear, and no pass over the output). ``b`` cancels in the output, so its gradient
    is exactly zero (the reference gives rounding noise); it reaches the running mean.
    Returns the output (P, Cout) and, not differentiable, the batch mean and biased variance of ``y``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor,  # type: ignore[override]
                eps: float) -> Tuple[Tensor, Tensor, Tensor]:
        n = x.shape[0]
        mean_x = _column_sums(x).div_(n)
        xc = x - mean_x
        wc = weight.mm(xc.t().mm(xc).div_(n))  # W cov_x
        var = (wc * weight).sum(1)
        rstd = (var + eps).rsqrt()
        scale = gamma * rstd
        scaled = weight * scale.unsqueeze(1)
        out = _linear_forward(xc, scaled, beta, False, None)
        mean = torch.addmv(bias, weight, mean_x)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xc, weight, wc, scale, rstd, scaled)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad: Optional[Tensor], _mean: None, _var: None):  # type: ignore[override]
        xc, weight, wc, scale, rstd, scaled = ctx.saved_tensors
        if grad is None:
            return (None,) * 6
        n = xc.shape[0]
        grad_beta = _column_sums(grad)
        grad_scaled = grad.t().mm(xc)
        grad_xc = grad.mm(scaled)
        grad_scale = (grad_scaled * weight).sum(1)  # scale = gamma * rstd, rstd = (var + eps)^-1/2
        grad_var = grad_scale * scale * rstd.pow(2) * -0.5
        grad_w = grad_scaled * scale.unsqueeze(1) + 2 * grad_var.unsqueeze(1) * wc
        grad_cov = (weight * grad_var.unsqueeze(1)).t().mm(weight)  # symmetric
        grad_xc.addmm_(xc, grad_cov, alpha=2.0 / n)
        grad_x = grad_xc.sub_(_column_sums(grad_xc).div_(n))
        # the conv bias (same shape as beta) cancels in the output: its gradient is exactly zero
        return grad_x, grad_w, torch.zeros_like(grad_beta), grad_scale * rstd, grad_beta, None


def linear_batchnorm(x: Tensor, weight: Tensor, bias: Tensor, bn: torch.nn.BatchNorm2d) -> Tensor:
    """``bn(conv1x1(x))`` for a BatchNorm in train mode: batch statistics, and running statistics
    updated exactly as ``nn.BatchNorm2d`` does (unbiased variance, ``momentum``, or the cumulative
    average when it is None). (B, Cin, H, W) channels_last -> (B, Cout, H, W) channels_last."""
    if not _custom_ok(x) or bn.weight is None:
        return bn(linear(x, weight, bias))
    x2 = pixel_rows(x)
    out, mean, var = _BatchNormLinear.apply(x2, weight.reshape(weight.shape[0], x.shape[1]), bias, bn.weight,
                                            bn.bias, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = x2.shape[0]
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_((var * (n / max(n - 1, 1))).to(bn.running_var.dtype), factor)
    return pixel_map(out, x.shape[0], x.shape[2], x.shape[3])
