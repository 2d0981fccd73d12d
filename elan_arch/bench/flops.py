"""FLOPs of what a model executes, for ``elan bench``: PyTorch's ``FlopCounterMode`` plus the operators
ELAN's fast path runs that its formula table lacks.

``torch.utils.flop_counter`` counts convolutions, matrix products and CUDA's attention kernels, but not
oneDNN's fused matrix product (``mkldnn::_linear_pointwise``: the fast path's 1x1 convolutions on the
CPU) nor the CPU's fused attention (``aten::_scaled_dot_product_flash_attention_for_cpu``: its window
attention in CPU inference). Without them the fast path counted almost nothing on the CPU. Work done
outside PyTorch's operators (Triton kernels, onnxruntime) stays invisible.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

Shape = Sequence[int]


def _onednn_linear(x: Shape, *args: Any, out_shape: Shape, **kwargs: Any) -> int:
    """``mkldnn::_linear_pointwise``, both overloads (``(X, W, B, attr, ...)`` and ``.binary(X, other, W, B,
    attr)``): ``X @ W^T`` from X's (..., K) rows to the output's (..., N), 2 per multiply-add; the
    epilogue (bias, ReLU, the added ``other``) is not counted, as for ``addmm``."""
    return 2 * math.prod(x[:-1]) * x[-1] * out_shape[-1]


def _cpu_attention(query: Shape, key: Shape, value: Shape, *args: Any, **kwargs: Any) -> int:
    """``softmax(q k^T) v`` on (..., L, E) tensors, leading dimensions as the batch (ELAN's windows
    come as (N, L, E)); the formula of CUDA's fused kernels."""
    def four_d(shape: Shape) -> Shape:
        return (math.prod(shape[:-2]), 1, shape[-2], shape[-1])
    return sdpa_flop_count(four_d(query), four_d(key), four_d(value))


def _extra_formulas() -> Dict[Any, Callable[..., int]]:
    formulas: Dict[Any, Callable[..., int]] = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    }
    try:  # keyed by operator (overload packet), as the counter looks them up
        formulas[torch.ops.mkldnn._linear_pointwise] = _onednn_linear
    except (AttributeError, RuntimeError):  # a build without oneDNN never runs them
        pass
    return formulas


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the operators that ``run()`` executes, counted on its second call: the
    first lets choices made by timing (the CPU attention form, :func:`elan_arch.archs.window_ops.cpu_inference_maps`,
    whose sharing GMSAs recompute ``q q^T`` with SDPA and reuse the maps otherwise) be made outside the count."""
    run()
    with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        run()
    return counter.get_total_flops()
