"""ELAN: Efficient Long-Range Attention Network for image super-resolution.

Zhang, Zeng, Guo, Zhang, ECCV 2022 (arXiv 2203.06697). This is a faithful
re-implementation of the authors' network: same module tree and state_dict keys
(so their checkpoints load after stripping DataParallel's ``module.`` prefix),
same arithmetic, same trainable parameter counts. Two deliberate differences,
both invisible to the authors' weights:

* BasicSR I/O: the network takes and returns float RGB in [0, 1] and multiplies
  by ``img_range`` (255 in the reference) internally.
* Inputs smaller than the padding work (the reference's single reflect pad
  raises for them); see :func:`pad_to_multiple`.

Named variants are in :data:`ELAN_VARIANTS`; the defaults give ELAN-light. The paper's ablation
rows, as changes to ELAN-light, are in :data:`ELAN_ABLATIONS` (options ``lfe``, ``attention``,
``shift_windows``, ``window_sizes``, ``n_share``; ``options/ablation/``).
"""
from __future__ import annotations

import math
import numbers
from functools import reduce
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from basicsr.utils.registry import ARCH_REGISTRY

from elan_arch.archs import elan_fast
from elan_arch.archs.elan_blocks import ATTENTION_KINDS, DIV2K_RGB_MEAN, ELAB, LFE_KINDS, MeanShift, pad_to_multiple

#: Reference configurations (``upscale`` is chosen separately).
ELAN_VARIANTS: Dict[str, dict] = {
    'ELAN-light': dict(c_elan=60, m_elan=24, n_share=1, r_expand=2, window_sizes=[4, 8, 16]),
    'ELAN': dict(c_elan=180, m_elan=36, n_share=0, r_expand=2, window_sizes=[4, 8, 16]),
}
#: The paper's ablations, each the one ``ELAN`` option that differs from ELAN-light
#: (``options/ablation/train_ELAN_light_x4_<name>.yml``, ``elan bench --ablation``,
#: ``python -m elan_arch.demo --variant <name>``).
ELAN_ABLATIONS: Dict[str, dict] = {
    'no_shift': dict(lfe='conv1x1'),
    'conv3x3': dict(lfe='conv3x3'),
    'window4': dict(window_sizes=[4]),
    'window8': dict(window_sizes=[8]),
    'window16': dict(window_sizes=[16]),
    'sa': dict(attention='sa'),
    'no_share': dict(n_share=0),
    'share3': dict(n_share=3),
    'no_shift_windows': dict(shift_windows=False),
}
#: The ablation options' reference values: with these the network is the authors'.
ABLATION_DEFAULTS: Dict[str, object] = dict(lfe=LFE_KINDS[0], attention=ATTENTION_KINDS[0], shift_windows=True)


def _integer(value: object) -> Optional[int]:
    """``value`` as an int if it is an integer (or an integral float), else None; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_window_sizes(window_sizes: Union[int, Sequence[int]]) -> List[int]:
    """``window_sizes`` (one size or several) as a list of ints, or ValueError with the rule.

    Rule: positive even integers, each dividing the largest.

    * Dividing the largest: the input is padded to a multiple of the sizes' least common multiple,
      which under this rule is the largest window (4, 8, 16 pad to 16), where sizes such as 4, 8, 15
      would pad every image to a multiple of 120 and spend most of the work on the padding.
    * Even: the shifted windows roll by half a window; the reference's code rolls an odd window by
      -(ws + 1) / 2 and back by only (ws - 1) / 2, which leaves the output moved by a pixel.
    """
    sizes = [window_sizes] if not isinstance(window_sizes, (list, tuple)) else list(window_sizes)
    ints = [_integer(ws) for ws in sizes]
    if not ints or any(ws is None or ws < 2 or ws % 2 for ws in ints):
        raise ValueError(f'ELAN: window_sizes must be positive even integers (shifted windows roll by half a '
                         f'window), got {window_sizes!r}')
    largest = max(ints)
    bad = [ws for ws in ints if largest % ws]
    if bad:
        raise ValueError(f'ELAN: window_sizes={ints}: every window size must divide the largest ({largest}), so '
                         f'that inputs are padded to a multiple of the largest window; {bad} do not (these sizes '
                         f'would pad to a multiple of lcm={reduce(math.lcm, ints)})')
    return ints


@ARCH_REGISTRY.register()
class ELAN(nn.Module):
    """ELAN super-resolution network (defaults: ELAN-light).

    Args:
        upscale: Upscaling factor (2, 3, 4, ...).
        colors: Image channels.
        c_elan: Feature channels (a multiple of ``len(window_sizes)``: one channel group per window size,
            whose queries and values (``asa``) or queries, keys and values (``sa``) have
            ``c_elan / len(window_sizes)`` channels each).
        m_elan: Number of (LFE, GMSA) pairs; a positive multiple of ``1 + n_share``.
        n_share: GMSAs per ELAB that reuse the first one's attention (an integer >= 0).
        r_expand: Channel expansion inside LFE.
        window_sizes: Attention window size of each channel group: one size (an int or a one-element
            list) or several, positive even integers each dividing the largest (:func:`check_window_sizes`);
            inputs are padded to a multiple of the largest.
        img_range: The reference's pixel range; inputs in [0, 1] are scaled by it.
        rgb_mean: Per-channel mean on [0, 1] that the fixed ``sub_mean``/``add_mean`` shifts
            subtract and add back (the reference's DIV2K mean by default). ``None`` drops both
            modules (no ``sub_mean``/``add_mean`` keys): traiNNer-redux's ELAN default
            (``norm: false``), which also uses ``img_range: 1``.
        fast_training: Train (and run anything that needs gradients or BatchNorm batch
            statistics) on :mod:`~elan_arch.archs.elan_fast`, the same function with the same
            gradients, reorganised for speed. ``None`` (default): on the CPU, where it is faster; not on
            CUDA, where it has not been shown faster than the reference arithmetic (unless
            ``fused_attention`` asks for the fast path's kernels), nor under ``torch.compile``, which
            fuses the reference's rolls, partitions and concatenations itself and compiles it better
            than the fast path's formulas. True / False force it on / off (``network_g.fast_training``
            in an option file). The measurements behind the rule: docs/performance.md.
        fused_attention: On the fast path, run each GMSA's window attention as the fused Triton
            kernels of :mod:`~elan_arch.archs.window_kernels` (forward and backward; CUDA, float32,
            float16 or bfloat16) instead of window gathers and ``bmm``: the windows and attention maps
            never reach memory. With ``fast_training: None`` it also puts CUDA training on the fast path.
            Off by default until measured on a GPU; where the kernels do not serve (no Triton, the CPU,
            2x2 windows, under ``torch.compile``) the fast path keeps the ``bmm`` form.

        lfe: The paper's ablation of the local feature extraction (:data:`~elan_arch.archs.elan_blocks.LFE_KINDS`):
            ``'shift'`` (default, the reference's shift-convolutions), ``'conv1x1'`` (the same 1x1
            convolutions without the shift), ``'conv3x3'`` (plain 3x3 convolutions instead).
        attention: ``'asa'`` (default, the reference's accelerated self-attention) or ``'sa'``
            (standard window self-attention: LayerNorm, Q, K and V projections, scaled softmax; the
            design is in :class:`~elan_arch.archs.elan_blocks.GMSA`).
        shift_windows: Whether the blocks at odd index roll their windows (default True, the reference).

    A non-default ``lfe`` or ``attention`` runs the module tree's reference arithmetic only, in training
    and inference alike (``fast_training``, ``fused_attention`` and ``fast_inference`` have no effect):
    the fast path assumes the reference's modules. The other options (windows, sharing, shifted
    windows) keep the fast path, which handles them.

    Invalid configurations raise ValueError at construction, stating the rule broken.

    Attribute ``fast_inference`` (default True): in eval mode with autograd off
    (``torch.no_grad``/``inference_mode``, as in BasicSR validation and testing), run the
    fast path too. None of these three attributes is part of the state_dict.

    Shape: (B, colors, H, W) in [0, 1] -> (B, colors, H*upscale, W*upscale), any H, W.
    """

    def __init__(self,
                 upscale: int = 4,
                 colors: int = 3,
                 c_elan: int = 60,
                 m_elan: int = 24,
                 n_share: int = 1,
                 r_expand: int = 2,
                 window_sizes: Union[int, Sequence[int]] = (4, 8, 16),
                 img_range: float = 255.,
                 rgb_mean: Optional[Sequence[float]] = DIV2K_RGB_MEAN,
                 fast_training: Optional[bool] = None,
                 fused_attention: bool = False,
                 lfe: str = 'shift',
                 attention: str = 'asa',
                 shift_windows: bool = True) -> None:
        super().__init__()
        window_sizes = check_window_sizes(window_sizes)
        if upscale < 1:
            raise ValueError(f'ELAN: upscale must be >= 1, got {upscale}')
        if lfe not in LFE_KINDS:
            raise ValueError(f'ELAN: lfe={lfe!r} is not one of {", ".join(map(repr, LFE_KINDS))}')
        if attention not in ATTENTION_KINDS:
            raise ValueError(f'ELAN: attention={attention!r} is not one of {", ".join(map(repr, ATTENTION_KINDS))}')
        if not isinstance(shift_windows, bool):
            raise ValueError(f'ELAN: shift_windows must be true or false, got {shift_windows!r}')
        if c_elan % len(window_sizes) != 0:
            raise ValueError(f'ELAN: c_elan={c_elan} must be divisible by len(window_sizes)={len(window_sizes)} '
                             '(one channel group per window size, whose queries and values (asa) or queries, keys '
                             'and values (sa) have c_elan / len(window_sizes) channels each)')
        if _integer(n_share) is None or n_share < 0:
            raise ValueError(f'ELAN: n_share must be an integer >= 0, got {n_share!r}')
        n_share = int(n_share)
        if m_elan < 1 or m_elan % (1 + n_share) != 0:
            raise ValueError(f'ELAN: m_elan={m_elan} must be a positive multiple of 1 + n_share={1 + n_share} '
                             f'(the body is m_elan / (1 + n_share) ELABs of 1 + n_share (LFE, GMSA) pairs)')
        self.upscale = upscale
        self.img_range = float(img_range)
        self.window_sizes = window_sizes
        self.pad_multiple = reduce(math.lcm, window_sizes)
        self.fast_inference = True
        self.fast_training = fast_training
        self.fused_attention = bool(fused_attention)
        self.lfe, self.attention, self.shift_windows = lfe, attention, shift_windows

        self.sub_mean: nn.Module = nn.Identity()
        self.add_mean: nn.Module = nn.Identity()
        if rgb_mean is not None:
            mean = [float(m) for m in rgb_mean]
            if len(mean) == 3 and colors != 3:  # the DIV2K default for grey or other channel counts
                mean = [sum(mean) / 3] * colors
            if len(mean) != colors:
                raise ValueError(f'ELAN: rgb_mean has {len(mean)} values for colors={colors}')
            self.sub_mean = MeanShift(self.img_range, mean, sign=-1)
            self.add_mean = MeanShift(self.img_range, mean, sign=1)
        self.head = nn.Sequential(nn.Conv2d(colors, c_elan, kernel_size=3, padding=1))
        self.body = nn.Sequential(*[
            ELAB(c_elan, r_expand, shift=shift_windows and i % 2 == 1, window_sizes=window_sizes, n_share=n_share,
                 lfe=lfe, attention=attention)
            for i in range(m_elan // (1 + n_share))
        ])
        self.tail = nn.Sequential(
            nn.Conv2d(c_elan, colors * upscale * upscale, kernel_size=3, padding=1), nn.PixelShuffle(upscale))

    @property
    def reference_only(self) -> bool:
        """Whether this network has modules the fast path does not implement (a non-default ``lfe`` or
        ``attention``), so that it always runs the module tree's reference arithmetic."""
        return self.lfe != LFE_KINDS[0] or self.attention != ATTENTION_KINDS[0]

    def uses_fast_path(self, x: Tensor) -> bool:
        """Whether a forward of ``x`` now runs :mod:`elan_fast`: never for a :attr:`reference_only`
        network; otherwise ``fast_inference`` decides in eval mode with autograd off, ``fast_training``
        in every other case (train mode, or gradients wanted; when it is None, see its entry in the
        class docstring)."""
        if self.reference_only:
            return False
        if not self.training and not torch.is_grad_enabled():
            return self.fast_inference
        if self.fast_training is None:
            return (not x.is_cuda or self.fused_attention) and not torch.compiler.is_compiling()
        return self.fast_training

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        if self.uses_fast_path(x):
            x = elan_fast.forward_padded(self, x)
        else:
            x = self.head(self.sub_mean(x * self.img_range))
            x = self.body(x) + x
            x = self.add_mean(self.tail(x)) / self.img_range
        return x[..., :h * self.upscale, :w * self.upscale]
