"""The network as ``elan export`` writes it: ELAN's function in the operations runtimes run fast.

:class:`DeployELAN` computes what :meth:`ELAN.forward` computes, from the modules' own parameters
(no second copy of the network, checkpoints unchanged), rewritten for onnxruntime, OpenVINO, TensorRT
and ncnn rather than for PyTorch:

* **No rolls.** A shifted block's cyclic roll and its window partition are one row ``Gather`` in
  the fast path's pixel order (:func:`~elan_arch.archs.window_ops._window_order`, with the roll; here
  computed as its inverse, :func:`window_positions`),
  the window reverse and the opposite roll one ``Gather`` by the inverse order; unshifted blocks
  gather the same way. The orders are computed once per forward from the padded size (constants in
  a fixed-shape export) and shared by every GMSA.
* **Tensors of rank <= 4.** Windows are rows of a (batch, pixels, channels) tensor, attention
  batches (windows, tokens, channels): no rank-5/6 reshape-transpose chains.
* **Two transposes per GMSA**: NCHW to pixel rows after ``project_inp`` and back before
  ``project_out``; the convolutions stay NCHW ``Conv`` nodes, which runtimes lay out themselves
  (onnxruntime's NCHWc blocks, for instance).
* **BatchNorm folded** into ``project_inp`` (:func:`~elan_arch.archs.elan_fast.fold_batchnorm`).
* **Shared attention maps reused**: a sharing GMSA multiplies the computing GMSA's maps with its
  values, as the reference does.
* **The padding** as :func:`~elan_arch.archs.elan_arch.pad_to_multiple` gives it (periodic
  reflection, :func:`reflect_indices`), and the crop, inside the graph.
* Attention (logits, softmax, maps times values) in float32 also in a float16 model: ELAN's logits
  are unscaled and overflow float16.

GMSAs of the ``attention: sa`` ablation run their module's own forward (reference arithmetic, with
rolls); every other configuration takes the path above.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elan_arch.archs.elan_arch import ELAN
from elan_arch.archs.elan_blocks import GMSA
from elan_arch.archs.elan_fast import fold_batchnorm

#: (window size, rolled) -> (order, inverse order) of the padded map's pixels (:func:`window_orders`).
Orders = Dict[Tuple[int, bool], Tuple[Tensor, Tensor]]


def reflect_indices(size: int, target: int) -> Tensor:
    """Indices 0..target-1 reflected into [0, size): 0, 1, .., size-1, size-2, .., 1, 0, 1, ..

    ``size`` and ``target`` come from an input's shape, which the exporters trace (TorchScript:
    as 0-dim tensors, torch.export: as symbolic ints), so the graph computes them for every size.
    ``size == 1`` repeats index 0.
    """
    i = torch.arange(target)
    period = i.new_full((), 2 * size - 2).clamp(min=1)
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - i, i)


def window_positions(h: int, w: int, ws: int, rolled: bool) -> Tensor:
    """Where each pixel of a row-major (h, w) map goes in the fast path's window order: the inverse
    permutation of :func:`~elan_arch.archs.window_ops._window_order` (tested equal), (h*w,) int64.

    Computed as a sum of a row term and a column term, without reshapes by ``h // ws``: the exporters
    trace ``h`` and ``w`` (symbolic in ``torch.export``, which cannot prove ``ws`` divides them and would
    fix the size), so the graph computes it for every size.
    """
    rows, cols = torch.arange(h), torch.arange(w)
    if rolled:  # the rolled map's pixel (r, c) is the input's (r + ws/2, c + ws/2): input r sits at r - ws/2
        rows, cols = torch.remainder(rows - ws // 2, h), torch.remainder(cols - ws // 2, w)
    row_term = (rows // ws) * (w // ws * ws * ws) + rows % ws * ws
    col_term = (cols // ws) * (ws * ws) + cols % ws
    return (row_term.unsqueeze(1) + col_term.unsqueeze(0)).reshape(-1)


def window_orders(h: int, w: int, net: ELAN) -> Orders:
    """For every window size of ``net`` and roll its blocks use, the pixel order of the (h, w) map's
    windows (roll + window partition as one gather) and its inverse (window reverse + opposite roll)."""
    orders: Orders = {}
    for ws in net.window_sizes:
        for rolled in sorted({gmsa.shift for block in net.body for gmsa in block.modules_gmsa.values()}):
            positions = window_positions(h, w, ws, rolled)
            orders[ws, rolled] = torch.argsort(positions), positions
    return orders


def gmsa_windows(m: GMSA, x: Tensor, size: Tuple[int, int, int], orders: Orders,
                 shared: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
    """``x + m(x, shared)`` for an ``asa`` :class:`GMSA` with window gathers; also returns the attention maps.

    Args:
        x: (B, C, H, W), H and W multiples of every window size.
        size: (B, H, W), from the padded input's shape: read there once, not from ``x`` (a runtime
            that keeps ``x`` in its own layout, onnxruntime's NCHWc for instance, need not lay it out as NCHW
            to read its shape).
        orders: :func:`window_orders` of (H, W).
        shared: For a sharing GMSA, the computing GMSA's maps (one (B*windows, L, L) per group).
    """
    b, h, w = size
    weight, bias = fold_batchnorm(m.project_inp[0], m.project_inp[1])  # in the BatchNorm's dtype (see export)
    proj = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype))
    rows = proj.permute(0, 2, 3, 1).reshape(b, h * w, proj.shape[1])  # (B, HW, channels): one transpose
    outputs, maps = [], []
    for idx, (ws, part) in enumerate(zip(m.window_sizes, rows.split(m.split_chns, dim=2))):
        order, inverse = orders[ws, m.shift]
        # (B, HW, c) -> (B * windows, L, c) as unflatten + flatten, the number of windows spelled out: a
        # reshape makes torch.export guard on whether there is one window
        windows = (h // ws) * (w // ws)
        tokens = part.index_select(1, order).unflatten(1, (windows, ws * ws)).flatten(0, 1).float()
        if shared is None:
            atn, v = m.attention_maps(tokens)
        else:
            atn, v = shared[idx], tokens
        y = (atn @ v).to(x.dtype).unflatten(0, (b, windows)).flatten(1, 2)  # (B, HW, c)
        outputs.append(y.index_select(1, inverse))
        maps.append(atn)
    y = torch.cat(outputs, dim=2).reshape(b, h, w, -1).permute(0, 3, 1, 2)  # the second transpose
    return x + m.project_out(y), maps


class DeployELAN(nn.Module):
    """The graph :func:`~elan_arch.deploy.onnx_export.export_onnx` writes: ``net`` (in eval mode) with
    in-graph padding and crop, in the runtime-friendly operations of this module.

    Shape: (B, colors, H, W) in [0, 1], any H, W >= 1 -> (B, colors, H*scale, W*scale), not clamped.
    """

    def __init__(self, net: ELAN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        h, w = x.shape[2], x.shape[3]
        m = net.pad_multiple
        x = x.index_select(2, reflect_indices(h, (h + m - 1) // m * m))
        x = x.index_select(3, reflect_indices(w, (w + m - 1) // m * m))
        size = x.shape[0], x.shape[2], x.shape[3]
        orders = window_orders(size[1], size[2], net)
        feat = net.head(net.sub_mean(x * net.img_range))
        y = feat
        for block in net.body:
            shared = None
            for lfe, gmsa in zip(block.modules_lfe.values(), block.modules_gmsa.values()):
                y = lfe(y) + y
                if gmsa.attention == 'asa':
                    y, shared = gmsa_windows(gmsa, y, size, orders, shared)
                else:
                    out, shared = gmsa(y, shared)
                    y = out + y
        y = net.add_mean(net.tail(y + feat)) / net.img_range
        return y[:, :, :h * net.upscale, :w * net.upscale]
