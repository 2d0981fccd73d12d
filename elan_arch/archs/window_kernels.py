"""ELAN's window attention as fused Triton kernels (CUDA), forward and backward.

``softmax(q q^T) v`` inside each (rolled) window of a GMSA's channel groups, read straight from
the ``project_inp`` output in pixel order and written straight to the attention output in
pixel order: the roll, the window partition, the (L, L) maps, the window reverse and the
concatenation of the groups never reach memory. The maps are recomputed in the backward
(flash-attention style: the forward keeps one log-sum-exp per token and group), and a sharing
GMSA recomputes them from the computing GMSA's queries, which is the reference's function and
gradient: ``softmax(q q^T)`` of the same ``q``.

* Layout: ``q_source`` / ``v_source`` are (P, C) row-major maps of P = batch * pixels (a
  channels_last map's rows, :func:`~elan_arch.archs.fast_ops.pixel_rows`); group ``g`` of
  window size ``ws`` reads its ``d`` query channels at ``q_offset`` and its value channels at
  ``v_offset``; token ``t`` of window ``n`` is pixel row ``order[n * ws * ws + t]``
  (:func:`~elan_arch.archs.window_ops.window_order`, which includes the roll).
* Forward, one program per (window, block of ``BLOCK`` queries): the keys (= queries) and values
  of the window in blocks, online softmax in float32, logits in float32 whatever the input dtype
  (ELAN's unscaled logits overflow float16).
* Backward, one program per (window, block ``i``): with ``S = q q^T`` symmetric, block ``i``'s
  query gradient is ``sum_j (dS_ij + dS_ji^T) q_j`` and its value gradient ``sum_j P_ji^T dO_j``,
  where ``dS = P * (dO v^T - delta)`` and ``delta = rowsum(dO * O)``: every (i, j) pair is
  recomputed from ``S_ij`` alone (``P_ji^T = exp(S_ij - lse_j)``), so each program writes its own
  rows once, without atomics.

Float32 products are IEEE float32 unless PyTorch's settings allow TF32 for ``torch.bmm``
(:func:`cuda_matmul_tf32`: ``torch.backends.cuda.matmul.fp32_precision``, ``allow_tf32``, or
``torch.set_float32_matmul_precision('high')``);
float16/bfloat16 inputs multiply in their dtype with float32 accumulation. Triton's interpreter
(``TRITON_INTERPRET=1``) runs the same kernels on CPU tensors, which is how the tests check them
without a GPU.
"""
from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from elan_arch.archs.fast_ops import needs_autograd

try:  # Triton ships with PyTorch's CUDA wheels on Linux; without it the bmm form serves
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

#: Input dtypes the kernels serve.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: The largest block of tokens one program holds. Its (BLOCK, BLOCK) tiles live in registers: compiled for
#: sm_90, blocks of 64 spilled registers in the float32 backward (ELAN's 60 channels: in the forward too);
#: blocks of 32 with 4 warps, and of 16 with 2, spill nowhere (float32, bfloat16; 20 and 60 channels).
MAX_BLOCK = 32


def interpreting() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``; kernels then run on CPU tensors)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def unavailable_reason(device: torch.device, interpreter_ok: bool = True) -> Optional[str]:
    """Why the kernels cannot serve tensors on ``device`` (for a command's error message), or None.
    ``interpreter_ok``: CPU tensors under Triton's interpreter count as served (not for timings)."""
    if triton is None:
        return 'Triton is not installed (pip install triton)'
    if device.type == 'cuda' or (interpreter_ok and device.type == 'cpu' and interpreting()):
        return None
    return f'they need a CUDA device (here: {device.type})'


def block_size(tokens: int) -> Optional[int]:
    """The block of a window of ``tokens`` tokens: the largest power of two <= :data:`MAX_BLOCK` dividing
    it, at least 16 (``tl.dot``'s smallest); None if there is none (e.g. 2x2 windows)."""
    block = MAX_BLOCK
    while block >= 16:
        if tokens % block == 0:
            return block
        block //= 2
    return None


def available(x: Tensor, window_sizes: Sequence[int]) -> bool:
    """Whether the kernels serve ``x``: Triton installed, not under ``torch.compile``, a CUDA tensor (a
    CPU one under the interpreter), a served dtype, and window sizes that are multiples of 4 (windows of
    a multiple of 16 tokens)."""
    if x.dtype not in DTYPES or torch.compiler.is_compiling() or unavailable_reason(x.device) is not None:
        return False
    return all(block_size(ws * ws) is not None for ws in window_sizes)


class Group(NamedTuple):
    """One channel group of a GMSA: window size, channels (queries = values), and where the queries,
    values and outputs start in their (P, C) maps."""
    window_size: int
    channels: int
    q_offset: int
    v_offset: int
    o_offset: int


def gmsa_groups(window_sizes: Sequence[int], split: Sequence[int], computing: bool) -> List[Group]:
    """The :class:`Group` layout of a GMSA whose ``project_inp`` output has the channel groups ``split``.

    A computing GMSA's group holds its queries then its values (half each); a sharing GMSA's group
    holds values only, and its queries are those of the computing GMSA (``2 * split``-wide groups)."""
    groups, start, out = [], 0, 0
    for ws, width in zip(window_sizes, split):
        d = width // 2 if computing else width
        q_offset = start if computing else 2 * start
        v_offset = start + d if computing else start
        groups.append(Group(int(ws), d, q_offset, v_offset, out))
        start += width
        out += d
    return groups


if triton is not None:

    @triton.jit
    def _window_rows(ORDER, TOKENS: tl.constexpr, BLOCK: tl.constexpr, start):
        # pixel rows of tokens start .. start + BLOCK of this program's window
        return tl.load(ORDER + tl.program_id(0) * TOKENS + start + tl.arange(0, BLOCK)).to(tl.int64)

    @triton.jit
    def _load_rows(base, rows, stride, offset, cols, mask):
        return tl.load(base + rows[:, None] * stride + offset + cols[None, :], mask=mask[None, :], other=0.0)

    @triton.jit
    def _store_rows(base, rows, stride, offset, cols, mask, value):
        tl.store(base + rows[:, None] * stride + offset + cols[None, :], value.to(base.dtype.element_ty),
                 mask=mask[None, :])

    @triton.jit
    def _attention_forward(Q, V, O, LSE, ORDER, stride_q, stride_v, stride_o, stride_lse,  # noqa: E741  (Triton kernels name their tensors in capitals)
                           q_offset, v_offset, o_offset, lse_offset,
                           TOKENS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                           STORE_LSE: tl.constexpr, PRECISION: tl.constexpr):
        cols = tl.arange(0, BLOCK_D)
        dmask = cols < D
        rows_i = _window_rows(ORDER, TOKENS, BLOCK, tl.program_id(1) * BLOCK)
        q_i = _load_rows(Q, rows_i, stride_q, q_offset, cols, dmask)
        m_i = tl.full([BLOCK], float('-inf'), tl.float32)
        l_i = tl.zeros([BLOCK], tl.float32)
        acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        for start in range(0, TOKENS, BLOCK):
            rows_j = _window_rows(ORDER, TOKENS, BLOCK, start)
            q_j = _load_rows(Q, rows_j, stride_q, q_offset, cols, dmask)
            v_j = _load_rows(V, rows_j, stride_v, v_offset, cols, dmask)
            s = tl.dot(q_i, tl.trans(q_j), input_precision=PRECISION)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v_j.dtype), v_j, input_precision=PRECISION)
            m_i = m_new
        _store_rows(O, rows_i, stride_o, o_offset, cols, dmask, acc / l_i[:, None])
        if STORE_LSE:
            tl.store(LSE + rows_i * stride_lse + lse_offset, m_i + tl.log(l_i))

    @triton.jit
    def _attention_backward(Q, V, DO, LSE, DELTA, DQ, DV, ORDER, stride_q, stride_v, stride_o, stride_lse,
                            q_offset, v_offset, o_offset, lse_offset,
                            TOKENS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                            PRECISION: tl.constexpr):
        cols = tl.arange(0, BLOCK_D)
        dmask = cols < D
        rows_i = _window_rows(ORDER, TOKENS, BLOCK, tl.program_id(1) * BLOCK)
        q_i = _load_rows(Q, rows_i, stride_q, q_offset, cols, dmask)
        v_i = _load_rows(V, rows_i, stride_v, v_offset, cols, dmask)
        do_i = _load_rows(DO, rows_i, stride_o, o_offset, cols, dmask)
        lse_i = tl.load(LSE + rows_i * stride_lse + lse_offset)
        delta_i = tl.load(DELTA + rows_i * stride_lse + lse_offset)
        dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
        for start in range(0, TOKENS, BLOCK):
            rows_j = _window_rows(ORDER, TOKENS, BLOCK, start)
            q_j = _load_rows(Q, rows_j, stride_q, q_offset, cols, dmask)
            v_j = _load_rows(V, rows_j, stride_v, v_offset, cols, dmask)
            do_j = _load_rows(DO, rows_j, stride_o, o_offset, cols, dmask)
            lse_j = tl.load(LSE + rows_j * stride_lse + lse_offset)
            delta_j = tl.load(DELTA + rows_j * stride_lse + lse_offset)
            s = tl.dot(q_i, tl.trans(q_j), input_precision=PRECISION)  # S_ij; S_ji = S_ij^T
            p_ij = tl.exp(s - lse_i[:, None])
            p_ji_t = tl.exp(s - lse_j[None, :])  # (P_ji)^T
            ds = p_ij * (tl.dot(do_i, tl.trans(v_j), input_precision=PRECISION) - delta_i[:, None])
            ds += p_ji_t * (tl.dot(v_i, tl.trans(do_j), input_precision=PRECISION) - delta_j[None, :])
            dq += tl.dot(ds.to(q_j.dtype), q_j, input_precision=PRECISION)
            dv += tl.dot(p_ji_t.to(do_j.dtype), do_j, input_precision=PRECISION)
        _store_rows(DQ, rows_i, stride_q, q_offset, cols, dmask, dq)
        _store_rows(DV, rows_i, stride_v, v_offset, cols, dmask, dv)


def cuda_matmul_tf32() -> bool:
    """Whether PyTorch lets float32 matrix products on CUDA (``torch.bmm``) use TF32, resolved as ATen
    resolves it: ``torch.backends.cuda.matmul.fp32_precision`` (which the legacy ``allow_tf32`` and
    ``torch.set_float32_matmul_precision`` also set); 'none' defers to ``torch.backends.cudnn.fp32_precision``
    (CUDA's setting for all operations), then to the generic ``torch.backends.fp32_precision``. Not
    ``torch.get_float32_matmul_precision()``: it raises once CUDA's matmul precision alone was set."""
    precision = getattr(torch.backends.cuda.matmul, 'fp32_precision', None)
    if precision is None:  # PyTorch before the per-backend settings (2.9)
        return torch.get_float32_matmul_precision() != 'highest'
    for fallback in (torch.backends.cudnn, torch.backends):
        if precision != 'none':
            break
        precision = getattr(fallback, 'fp32_precision', 'none')
    return precision == 'tf32'


def _precision(x: Tensor) -> Optional[str]:
    """``tl.dot``'s input precision: IEEE float32 unless PyTorch allows TF32 for float32 matrix products
    on CUDA (:func:`cuda_matmul_tf32`), as for ``torch.bmm``; Triton's default for 16-bit inputs."""
    if x.dtype != torch.float32:
        return None
    return 'tf32' if cuda_matmul_tf32() else 'ieee'


def _launch(group: Group, pixels: int) -> Tuple[Tuple[int, int], Dict[str, int]]:
    """Grid and constants of a kernel launch for ``group``: one program per (window, block of tokens),
    a warp per 8 tokens of the block (see :data:`MAX_BLOCK`)."""
    tokens = group.window_size ** 2
    block = block_size(tokens)
    assert block is not None and pixels % tokens == 0, f'windows of {tokens} tokens do not tile {pixels} pixels'
    constants = dict(TOKENS=tokens, D=group.channels, BLOCK=block,
                     BLOCK_D=max(16, triton.next_power_of_2(group.channels)), num_warps=block // 8)
    return (pixels // tokens, tokens // block), constants


def _forward(q_source: Tensor, v_source: Tensor, orders: Sequence[Tensor], groups: Sequence[Group],
             store_lse: bool) -> Tuple[Tensor, Optional[Tensor]]:
    pixels = v_source.shape[0]
    out = v_source.new_empty(pixels, sum(g.channels for g in groups))
    lse = torch.empty(pixels, len(groups), dtype=torch.float32, device=v_source.device) if store_lse else out
    precision = _precision(q_source)
    for index, (group, order) in enumerate(zip(groups, orders)):
        grid, constants = _launch(group, pixels)
        _attention_forward[grid](
            q_source, v_source, out, lse, order, q_source.stride(0), v_source.stride(0), out.stride(0),
            lse.stride(0), group.q_offset, group.v_offset, group.o_offset, index,
            STORE_LSE=store_lse, PRECISION=precision, **constants)
    return out, (lse if store_lse else None)


def _gradient_buffer(source: Tensor, written: int) -> Tensor:
    """A gradient for ``source`` (P, C) of which the kernels write ``written`` channels per row: left
    uninitialised when they write every channel, zero-filled otherwise."""
    return (torch.empty_like if written == source.shape[1] else torch.zeros_like)(source)


class _WindowAttention(torch.autograd.Function):
    """The fused forward and backward of all groups of one GMSA (see the module docstring)."""

    @staticmethod
    def forward(q_source: Tensor, v_source: Tensor, orders: Tuple[Tensor, ...],  # type: ignore[override]
                groups: Tuple[Group, ...]) -> Tuple[Tensor, Tensor]:
        return _forward(q_source, v_source, orders, groups, store_lse=True)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        q_source, v_source, orders, groups = inputs
        # the orders are constant index tensors, cached per shape (possibly made under inference_mode, whose
        # tensors save_for_backward refuses), as in window_ops' gathers
        ctx.groups, ctx.orders, ctx.same = groups, orders, q_source is v_source
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(q_source, v_source, output[0], output[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_lse: None):  # type: ignore[override]
        q_source, v_source, out, lse = ctx.saved_tensors
        orders = ctx.orders
        groups: Tuple[Group, ...] = ctx.groups
        grad_out = grad_out.contiguous()
        pixels = out.shape[0]
        delta = torch.stack([(grad_out[:, g.o_offset:g.o_offset + g.channels].float()
                              * out[:, g.o_offset:g.o_offset + g.channels].float()).sum(1) for g in groups], 1)
        channels = sum(g.channels for g in groups)
        if ctx.same:  # a computing GMSA: the queries and values of its groups
            grad_q = grad_v = _gradient_buffer(q_source, 2 * channels)
        else:  # a sharing GMSA: its values, and the query channels of the computing GMSA's map
            grad_q, grad_v = _gradient_buffer(q_source, channels), _gradient_buffer(v_source, channels)
        precision = _precision(q_source)
        for index, (group, order) in enumerate(zip(groups, orders)):
            grid, constants = _launch(group, pixels)
            _attention_backward[grid](
                q_source, v_source, grad_out, lse, delta, grad_q, grad_v, order, q_source.stride(0),
                v_source.stride(0), grad_out.stride(0), lse.stride(0), group.q_offset, group.v_offset,
                group.o_offset, index, PRECISION=precision, **constants)
        if ctx.same:
            return grad_q, None, None, None
        return grad_q, grad_v, None, None


def fused_window_attention(q_source: Tensor, v_source: Tensor, orders: Sequence[Tensor],
                     groups: Sequence[Group]) -> Tensor:
    """``softmax(q q^T) v`` in every window of every group, fused (see the module docstring).

    Args:
        q_source: (P, Cq) row-major map holding each group's queries (= keys).
        v_source: (P, Cv) row-major map holding each group's values; the same tensor as
            ``q_source`` for a computing GMSA.
        orders: Per group, the (P,) pixel rows in window order (:func:`window_order`).
        groups: Per group, its :class:`Group` layout (:func:`gmsa_groups`).

    Returns:
        (P, sum of the groups' channels), the groups' outputs side by side, in pixel order.
    """
    same = q_source is v_source
    q_source = q_source if q_source.stride(1) == 1 else q_source.contiguous()
    v_source = q_source if same else v_source if v_source.stride(1) == 1 else v_source.contiguous()
    if needs_autograd(q_source, v_source):
        return _WindowAttention.apply(q_source, v_source, tuple(orders), tuple(groups))[0]
    return _forward(q_source, v_source, orders, groups, store_lse=False)[0]
