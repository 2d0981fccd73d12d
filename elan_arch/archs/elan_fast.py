"""Inference fast path of :class:`~elan_arch.archs.elan_arch.ELAN` (eval mode, autograd off).

Same arithmetic as the training path up to float rounding, reorganised for speed:

* Everything runs in ``channels_last`` memory (NHWC), where oneDNN's 1x1 and
  depthwise convolutions are several times faster on CPU than in NCHW (the fixed
  shift's depthwise conv: about 15x), and where a channel group of a feature map
  is a plain strided view. In this layout the depthwise conv also beat doing the
  shift by slice copies (short strided runs), so the shift stays a conv.
* BatchNorm is folded into its 1x1 conv on every call (a few thousand
  multiply-adds, so nothing is cached and nothing goes stale when training resumes).
* Residual additions and the ReLU are done in place on fresh tensors.
* The cyclic roll and the window partition of a channel group are one
  ``index_select`` with a precomputed pixel order; the inverse is one ``index_copy_``
  into the preallocated output of all groups (no ``torch.roll``, no ``torch.cat``).
* Window attention on CPU is ``scaled_dot_product_attention(q, q, v, scale=1)``, a
  fused kernel that never materialises the (ws^2 x ws^2) maps. A sharing GMSA therefore
  reuses the previous GMSA's *queries* and recomputes the softmax instead of
  reusing stored maps: cheaper than writing and reading the maps for 16x16 windows.
  On CUDA it is two batched matrix products around a softmax (see :func:`window_attention`).

The functions read the modules' own parameters and buffers, so the state_dict and
the parameter count are those of the training path.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, List, Optional, Tuple

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


def shift_conv(m: ShiftConv2d, x: Tensor) -> Tensor:
    """``m(x)``: the fixed shift (depthwise conv with the module's kernel), then the 1x1 conv.

    Shape: (B, Cin, H, W) -> (B, Cout, H, W), channels_last in and out.
    """
    m = m.shift_conv
    x = F.conv2d(x, m.weight, padding=1, groups=x.shape[1])
    return F.conv2d(x, m.conv1x1.weight, m.conv1x1.bias)


def lfe(m: LFE, x: Tensor) -> Tensor:
    """``x + m(x)`` for an :class:`LFE`. (B, C, H, W) -> (B, C, H, W)."""
    return shift_conv(m.conv1, shift_conv(m.conv0, x).relu_()).add_(x)


@lru_cache(maxsize=64)
def window_order(h: int, w: int, ws: int, rolled: bool, device: torch.device) -> Tensor:
    """Row-major pixel indices of an (h, w) map, listed window by window (``window_partition`` order).

    With ``rolled`` the windows are those of the map cyclically rolled by (-ws/2, -ws/2),
    so gathering these indices is roll + partition, and scattering back to them is
    window reverse + the opposite roll.
    """
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    if rolled:
        rows, cols = (rows + ws // 2) % h, (cols + ws // 2) % w
    index = rows.view(h // ws, ws, 1, 1) * w + cols.view(1, 1, w // ws, ws)  # (h/ws, ws, w/ws, ws)
    return index.permute(0, 2, 1, 3).reshape(-1)


def window_attention(q: Tensor, v: Tensor, fused: bool) -> Tensor:
    """``softmax(q @ q^T) @ v`` per window. (N, L, Cq), (N, L, Cv) -> (N, L, Cv).

    ``fused`` uses ``scaled_dot_product_attention`` (the faster choice on CPU). On CUDA,
    PyTorch's fused attention kernels need head sizes that ELAN's channel groups do not
    have (queries of 20 channels in ELAN-light, 60 in ELAN), so SDPA falls back to its
    unfused math kernel; two ``bmm`` were faster there (H100, float32, x4 on a 176x320
    input: ELAN-light 14.7 against 21.6 ms, ELAN 42.9 against 52.3 ms).
    ELAN's attention is unscaled, so float16 logits can overflow: for float16 inputs the
    logits and the softmax are computed in float32, as SDPA's math kernel does.
    """
    if fused:
        return F.scaled_dot_product_attention(q, q, v, scale=1.0)
    if q.dtype == torch.float16:
        q = q.float()
    return torch.bmm(torch.bmm(q, q.transpose(1, 2)).softmax(dim=-1).to(v.dtype), v)


def gmsa(m: GMSA, x: Tensor, queries: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
    """``x + m(x, ...)`` for a :class:`GMSA`, and the window queries a sharing GMSA reuses.

    Args:
        x: (B, C, H, W) channels_last, H and W multiples of every window size.
        queries: The previous GMSA's queries (one (B * nW, ws^2, c) tensor per group), or None.

    Returns:
        (B, C, H, W) channels_last, and this layer's queries (``queries`` when it shares).
    """
    b, c, h, w = x.shape
    weight, bias = fold_batchnorm(m.project_inp[0], m.project_inp[1])
    proj = F.conv2d(x, weight, bias).permute(0, 2, 3, 1).reshape(b, h * w, -1)  # a view: NHWC memory
    out = x.new_empty(b, h * w, c)
    own_queries, c_in, c_out = [], 0, 0
    for idx, (ws, chns) in enumerate(zip(m.window_sizes, m.split_chns)):
        order = window_order(h, w, ws, m.shift, x.device)
        tokens = proj[:, :, c_in:c_in + chns].index_select(1, order).view(-1, ws * ws, chns)
        if queries is None:
            q, v = tokens.chunk(2, dim=-1)
        else:
            q, v = queries[idx], tokens
        y = window_attention(q, v, fused=not x.is_cuda)
        out[:, :, c_out:c_out + v.shape[-1]].index_copy_(1, order, y.view(b, h * w, -1))
        own_queries.append(q)
        c_in, c_out = c_in + chns, c_out + v.shape[-1]
    out = out.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last (B, C, H, W)
    return F.conv2d(out, m.project_out.weight, m.project_out.bias).add_(x), own_queries


def elab(m: ELAB, x: Tensor) -> Tensor:
    """``m(x)`` for an :class:`ELAB`. (B, C, H, W) channels_last -> same."""
    queries = None
    for lfe_m, gmsa_m in zip(m.modules_lfe.values(), m.modules_gmsa.values()):
        x = lfe(lfe_m, x)
        x, queries = gmsa(gmsa_m, x, queries)
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
    x = net.add_mean(net.tail(x.add_(res)))
    return x.div_(net.img_range).contiguous()
