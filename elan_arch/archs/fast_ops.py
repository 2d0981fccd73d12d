"""The per-pixel operations of ELAN's fast path (:mod:`~elan_arch.archs.elan_fast`), each in one place.

Each is the reference's operation reorganised for speed, with a backward written for it
where autograd's would be slower; each keeps the reference's function and gradients:

* :func:`shift`: the fixed one-pixel shift of the channel groups as the module's one-hot
  depthwise kernel; its backward is the same convolution with the kernel flipped (the
  opposite shift), cheaper than ``conv2d``'s own input gradient.
* :func:`linear`: a 1x1 convolution as one matrix product over the pixels of a
  channels_last map, with the bias and the ReLU or the residual addition that follows it
  in the same pass (oneDNN's fused matmul on the CPU, cheaper than ``addmm`` plus a separate
  pass); its gradients stay channels_last.
  On CUDA the convolution itself (:func:`as_convolution`).
* :func:`linear_batchnorm`: project_inp's 1x1 convolution and its BatchNorm in train mode as one
  matrix product (batch statistics from the input's covariance), running statistics as ``nn.BatchNorm2d``;
  on CUDA the convolution and ``nn.BatchNorm2d`` themselves.
* The windows (roll, partition, attention): :mod:`~elan_arch.archs.window_ops`.

The hand-written autograd functions serve float32 and float64 tensors on any device (oneDNN's fused
matmul: float32 on the CPU); under ``torch.compile``, a trace or autocast, the same formulas run as
plain operations, which the compiler fuses or autocast casts itself.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _has_onednn_linear() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise.default is not None
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_LINEAR = _has_onednn_linear()


def plain_ops() -> bool:
    """Under ``torch.compile`` or a trace: only standard ops (the compiler fuses them itself)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def custom_functions_ok(x: Tensor) -> bool:
    """Whether the fast path's hand-written autograd functions serve ``x``: not under a compiler or a
    trace, and not under autocast (whose precision choices they would bypass), in float32 or float64."""
    return (not plain_ops() and not torch.is_autocast_enabled(x.device.type)
            and x.dtype in (torch.float32, torch.float64))


def needs_autograd(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd records an operation on ``tensors`` (grad mode on and one of them requires grad)."""
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


#: Rows per block of :func:`_column_sums`.
SUM_BLOCK = 1024


def _column_sums(g: Tensor) -> Tensor:
    """``g.sum(0)`` of a (P, C) matrix as products with a row of ones, by blocks of :data:`SUM_BLOCK` rows
    whose sums are then added (faster than ``sum`` on the CPU). The blocks bound how many terms one
    accumulator adds in a row: one product over all P rows accumulates them in one chain in some kernels
    (AVX2 builds), an error growing with P (docs/internals.md, "How tolerances are chosen")."""
    rows, cols = g.shape
    blocks = rows // SUM_BLOCK
    total = None
    if blocks:
        head = g[:blocks * SUM_BLOCK].view(blocks, SUM_BLOCK, cols)
        total = _ones(SUM_BLOCK, g.dtype, g.device).expand(blocks, 1, SUM_BLOCK).bmm(head).sum(0).view(-1)
    if rows > blocks * SUM_BLOCK:
        tail = _ones(rows - blocks * SUM_BLOCK, g.dtype, g.device).mm(g[blocks * SUM_BLOCK:]).view(-1)
        total = tail if total is None else total + tail
    return total


def as_convolution(x: Tensor) -> bool:
    """Whether :func:`linear` and :func:`linear_batchnorm` keep the 1x1 convolution (and BatchNorm) as the
    reference's own operations rather than matrix products: on CUDA.

    There the two differ in arithmetic, not only in speed: cuDNN runs float32 convolutions in TF32 unless
    told otherwise (``torch.backends.cudnn.allow_tf32``, on by default), cuBLAS runs float32 matrix
    products in IEEE float32 (``torch.backends.cuda.matmul``, off by default). As matrix products, the
    fast path's 1x1 convolutions, most of a step's arithmetic, would run without tensor cores in float32
    where the reference's run with them. Kept as convolutions they follow whatever precision the user set
    for convolutions, as the reference does.
    """
    return x.is_cuda


def _epilogue(y: Tensor, relu: bool, residual: Optional[Tensor]) -> Tensor:
    """ReLU or ``+ residual`` on a new tensor ``y``: in place, except under a compiler (the
    out-of-place form traces cleaner)."""
    inplace = not plain_ops()
    if relu:
        y = y.relu_() if inplace else y.relu()
    if residual is not None:
        y = y.add_(residual) if inplace else y + residual
    return y


def _linear_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool,
                    residual: Optional[Tensor]) -> Tensor:
    """``x @ weight^T + bias``, then ReLU or ``+ residual``, fused where oneDNN serves ``x``.
    (P, Cin) -> (P, Cout); a new tensor (``residual`` is not modified)."""
    if _ONEDNN_LINEAR and x.device.type == 'cpu' and x.dtype == torch.float32 and custom_functions_ok(x):
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, 'add')
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu' if relu else 'none', [], '')
    return _epilogue(F.linear(x, weight, bias), relu, residual)


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
    (convolution kernels may return NCHW gradients, which cost a layout change downstream). On CUDA
    (:func:`as_convolution`) the convolution itself, then ReLU or the residual in place.
    """
    if as_convolution(x):
        return _epilogue(F.conv2d(x, weight.reshape(weight.shape[0], x.shape[1], 1, 1), bias), relu, residual)
    weight = weight.reshape(weight.shape[0], x.shape[1])
    x2 = pixel_rows(x)
    r2 = None if residual is None else pixel_rows(residual)
    if needs_autograd(x, weight, bias, r2) and custom_functions_ok(x):
        y = _Linear.apply(x2, weight, bias, r2, relu)
    else:
        y = _linear_forward(x2, weight, bias, relu, r2)
    return pixel_map(y, x.shape[0], x.shape[2], x.shape[3])


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
    average when it is None). (B, Cin, H, W) channels_last -> (B, Cout, H, W) channels_last.
    On CUDA (:func:`as_convolution`), under a compiler or autocast, and for any other BatchNorm class
    (``nn.SyncBatchNorm`` gathers its statistics across processes): ``bn`` itself after :func:`linear`."""
    if (not custom_functions_ok(x) or bn.weight is None or as_convolution(x)
            or type(bn) is not torch.nn.BatchNorm2d):
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
