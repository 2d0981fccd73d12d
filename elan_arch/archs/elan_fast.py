"""The fast path of :class:`~elan_arch.archs.elan_arch.ELAN`, for training (autograd) and inference.

The same function as the module tree's reference arithmetic (``ELAN.forward`` with
``fast_training=False`` / ``fast_inference=False``), with the same gradients, reorganised
for speed: everything runs in ``channels_last`` memory (NHWC), where a 1x1 convolution is one
matrix product over the pixels and a channel group is a plain strided view, on the operations
of :mod:`~elan_arch.archs.fast_ops` and :mod:`~elan_arch.archs.window_ops` (each idea there, in one place):

* LFE: shift, 1x1 conv with its bias and ReLU in one pass, shift, 1x1 conv with its bias and
  the residual addition in one pass (on CUDA the convolutions stay cuDNN's, for its precision rules:
  :func:`~elan_arch.archs.fast_ops.as_convolution`).
* GMSA: ``project_inp``'s BatchNorm in train mode as part of the 1x1 conv's matrix product
  (batch statistics from the input's covariance; running statistics updated as
  ``nn.BatchNorm2d`` does), folded into the conv in eval mode; the roll and window partition of
  each group as one row gather; window attention with the maps a sharing GMSA reuses (or, with
  ``ELAN.fused_attention`` on CUDA, all of that as one fused Triton kernel per group);
  ``project_out`` with the residual addition in one pass.
* Without autograd, the remaining residual additions are in place.

The functions read the modules' own parameters and buffers, so the state_dict, the
parameter count and checkpoints are those of the module tree.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from elan_arch.archs import window_kernels
from elan_arch.archs.elan_blocks import ELAB, GMSA, LFE
from elan_arch.archs.fast_ops import linear, linear_batchnorm, pixel_map, pixel_rows, shift
from elan_arch.archs.window_ops import AttentionState, gmsa_attention, window_order


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """Weight and bias of the single conv equal to ``bn(conv(x))`` with BatchNorm in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = (conv.bias - bn.running_mean) * scale + bn.bias
    return weight, bias


def _inplace_ok() -> bool:
    """In-place global residual and scaling only without autograd: under autograd they would hit
    permuted views, whose in-place backward copies the gradient into NCHW order."""
    return not torch.is_grad_enabled()


def lfe(m: LFE, x: Tensor) -> Tensor:
    """``x + m(x)`` for an :class:`LFE`. (B, C, H, W) channels_last -> same."""
    conv0, conv1 = m.conv0.shift_conv, m.conv1.shift_conv
    y = linear(shift(x, conv0.weight), conv0.conv1x1.weight, conv0.conv1x1.bias, relu=True)
    return linear(shift(y, conv1.weight), conv1.conv1x1.weight, conv1.conv1x1.bias, residual=x)


def project_inp(m: GMSA, x: Tensor) -> Tensor:
    """``m.project_inp(x)``: 1x1 conv + BatchNorm, with batch statistics (and running-statistics
    updates) when the BatchNorm is in train mode, folded into the conv in eval mode."""
    conv, bn = m.project_inp[0], m.project_inp[1]
    if bn.training:
        return linear_batchnorm(x, conv.weight, conv.bias, bn)
    return linear(x, *fold_batchnorm(conv, bn))


def gmsa(m: GMSA, x: Tensor, shared: Optional[AttentionState], fused: bool) -> Tuple[Tensor, AttentionState]:
    """``x + m(x, ...)`` for a :class:`GMSA`, and the attention state a sharing GMSA reuses.

    Args:
        x: (B, C, H, W) channels_last, H and W multiples of every window size.
        shared: For a sharing GMSA, what the computing GMSA's call returned.
        fused: Window attention as :mod:`~elan_arch.archs.window_kernels`' fused kernels.

    Returns:
        (B, C, H, W) channels_last, and this layer's :data:`~elan_arch.archs.window_ops.AttentionState`.
    """
    b, _, h, w = x.shape
    proj = pixel_rows(project_inp(m, x))
    orders = [window_order(b, h, w, ws, m.shift, x.device) for ws in m.window_sizes]
    out, state = gmsa_attention(proj, orders, m.window_sizes, m.split_chns, shared, fused)
    return linear(pixel_map(out, b, h, w), m.project_out.weight, m.project_out.bias, residual=x), state


def elab(m: ELAB, x: Tensor, fused: bool) -> Tensor:
    """``m(x)`` for an :class:`ELAB` (``fused``: see :func:`gmsa`). (B, C, H, W) channels_last -> same."""
    shared = None
    for lfe_m, gmsa_m in zip(m.modules_lfe.values(), m.modules_gmsa.values()):
        x = lfe(lfe_m, x)
        x, shared = gmsa(gmsa_m, x, shared, fused)
    return x


def forward_padded(net: nn.Module, x: Tensor) -> Tensor:
    """The body of :meth:`ELAN.forward` on an input already padded to ``net.pad_multiple``.

    Shape: (B, colors, H, W) in [0, 1] -> (B, colors, H*scale, W*scale), contiguous.
    """
    fused = net.fused_attention and window_kernels.available(x, net.window_sizes)
    x = x.contiguous(memory_format=torch.channels_last) * net.img_range
    x = net.head(net.sub_mean(x))
    res = x
    for block in net.body:
        x = elab(block, x, fused)
    x = net.add_mean(net.tail(x.add_(res) if _inplace_ok() else x + res))
    return (x.div_(net.img_range) if _inplace_ok() else x / net.img_range).contiguous()
