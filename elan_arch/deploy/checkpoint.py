"""ELAN networks from checkpoint files: configuration inferred from the weights, loading, converting.

The file formats (BasicSR, the authors', traiNNer-redux's ``.pth``/``.safetensors``, this
package's safetensors, bare state_dicts) are read by :mod:`elan_arch.deploy.checkpoint_formats`.
The network configuration is inferred from tensor shapes by :func:`infer_config`, then
completed by what the file records and by explicit overrides (:func:`resolve_config`);
``window_sizes`` leaves no trace in the weights and defaults to the reference's unless the
file records it.

The ablation options (``ELAN(lfe=..., attention=...)``) are inferred from the keys: an LFE without
``shift_conv.weight`` kernels is ``lfe='conv1x1'``, one with plain ``conv0.weight`` 3x3 kernels
``lfe='conv3x3'``, a GMSA with a LayerNorm (``norm.weight``) ``attention='sa'``; a checkpoint that
matches none of these module trees is refused with an :class:`ElanError` naming what does not fit.
``shift_windows``, like ``window_sizes``, leaves no trace in the weights: it is the reference's (True)
unless the file records it (this package's safetensors) or it is passed
(``load_network_from_checkpoint(path, shift_windows=False, window_sizes=[16])``).

Mean shift and pixel range: a state_dict with ``sub_mean``/``add_mean`` is the authors'
network (``img_range`` read from the shift, 255 for their weights); one without them is
traiNNer-redux's default ``norm: false`` ELAN: ``rgb_mean=None, img_range=1``.
traiNNer-redux's ``norm: true`` weights look like the authors' but expect ``img_range=1``,
which their files do not record: pass ``img_range=1`` (``--img-range 1``) for them.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from elan_arch.archs.elan_arch import ABLATION_DEFAULTS, ELAN, ELAN_VARIANTS
from elan_arch.archs.elan_blocks import DIV2K_RGB_MEAN
from elan_arch.deploy.checkpoint_formats import StateDict, read_checkpoint, write_safetensors
from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path

_BLOCK_KEY = re.compile(r'^body\.(\d+)\.modules_gmsa\.gmsa_(\d+)\.project_inp\.0\.weight$')
#: Keyword arguments of :class:`ELAN` that describe the network (what ``network_g`` may set).
ELAN_KWARGS = tuple(p for p in inspect.signature(ELAN).parameters if p not in ('fast_training', 'fused_attention'))
#: Formats ``convert_checkpoint`` writes.
OUTPUT_FORMATS = ('pth', 'safetensors')


def _shape(sd: StateDict, key: str, ndim: int, path: str) -> Tuple[int, ...]:
    if key not in sd:
        raise ElanError(f'{path}: not an ELAN checkpoint, key {key!r} is missing')
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise ElanError(f'{path}: not an ELAN checkpoint, {key!r} has shape {shape}')
    return shape


def _ablation_kinds(sd: StateDict, c_elan: int, path: str) -> Tuple[str, str, str]:
    """``(lfe, attention, LFE expansion key)`` that the first LFE and GMSA's keys show (the module
    docstring's rules); ElanError where they fit neither ELAN's nor an ablation's module tree."""
    lfe_prefix, gmsa_prefix = 'body.0.modules_lfe.lfe_0.conv0.', 'body.0.modules_gmsa.gmsa_0.'
    if lfe_prefix + 'weight' in sd:
        kernel = _shape(sd, lfe_prefix + 'weight', 4, path)[2:]
        if kernel != (3, 3):
            raise ElanError(f'{path}: {lfe_prefix}weight has {kernel[0]}x{kernel[1]} kernels; ELAN\'s LFE is a '
                            'shift-convolution, a 1x1 convolution (lfe: conv1x1) or a 3x3 one (lfe: conv3x3)')
        lfe, expand_key = 'conv3x3', lfe_prefix + 'weight'
    else:
        expand_key = lfe_prefix + 'shift_conv.conv1x1.weight'
        lfe = 'shift' if lfe_prefix + 'shift_conv.weight' in sd else 'conv1x1'
    attention = 'sa' if gmsa_prefix + 'norm.weight' in sd else 'asa'
    inner = _shape(sd, gmsa_prefix + 'project_inp.0.weight', 4, path)[0]
    per_pixel = 3 if attention == 'sa' else 2
    if inner != per_pixel * c_elan:
        kind = 'standard attention (attention: sa, with a LayerNorm)' if attention == 'sa' else \
            "ELAN's accelerated attention (attention: asa)"
        raise ElanError(f'{path}: {gmsa_prefix}project_inp.0.weight has {inner} output channels, not '
                        f'{per_pixel} x c_elan = {per_pixel * c_elan} as {kind} needs: an unsupported attention')
    return lfe, attention, expand_key


def infer_config(sd: StateDict, path: str = 'checkpoint') -> Dict[str, Any]:
    """Infer the ELAN keyword arguments (all but ``window_sizes`` and ``shift_windows``) from a
    state_dict's keys and shapes.

    ``img_range`` comes from the mean shift (``sub_mean.bias = -img_range * mean``); without
    one, ``rgb_mean`` is None and ``img_range`` 1 (traiNNer-redux's default ELAN). ``lfe`` and
    ``attention`` are included only where they are not the reference's (the module docstring's rules).

    Raises:
        ElanError: the tensors do not describe an ELAN network.
    """
    c_elan, colors, _, _ = _shape(sd, 'head.0.weight', 4, path)
    tail_out = _shape(sd, 'tail.0.weight', 4, path)[0]
    upscale = round((tail_out / colors)**0.5)
    if upscale < 1 or colors * upscale * upscale != tail_out:
        raise ElanError(f'{path}: tail.0.weight has {tail_out} output channels, not colors * scale^2 '
                        f'for colors={colors}')
    gmsa = [tuple(map(int, m.groups())) for m in map(_BLOCK_KEY.match, sd) if m]
    if not gmsa:
        raise ElanError(f'{path}: not an ELAN checkpoint, no body.N.modules_gmsa.* keys')
    n_blocks = max(b for b, _ in gmsa) + 1
    n_share = max(g for _, g in gmsa)
    lfe, attention, expand_key = _ablation_kinds(sd, c_elan, path)
    expand = _shape(sd, expand_key, 4, path)[0]
    if expand % c_elan:
        raise ElanError(f'{path}: LFE width {expand} is not a multiple of c_elan={c_elan}')
    config = dict(upscale=upscale, colors=colors, c_elan=c_elan, m_elan=n_blocks * (1 + n_share),
                  n_share=n_share, r_expand=expand // c_elan)
    config.update({k: v for k, v in (('lfe', lfe), ('attention', attention)) if v != ABLATION_DEFAULTS[k]})
    if 'sub_mean.bias' not in sd:  # traiNNer-redux's default: no mean shift, arithmetic on [0, 1]
        return {**config, 'img_range': 1.0, 'rgb_mean': None}
    return {**config, 'img_range': float(round(-sd['sub_mean.bias'][0].item() / _default_mean(colors)[0], 3))}


def _default_mean(colors: int) -> Tuple[float, ...]:
    """The mean ``ELAN(rgb_mean=DIV2K_RGB_MEAN)`` uses for ``colors`` channels."""
    return DIV2K_RGB_MEAN if colors == 3 else (sum(DIV2K_RGB_MEAN) / 3,) * colors


def resolve_config(sd: StateDict, path: str = 'checkpoint', recorded: Optional[Dict[str, Any]] = None,
                   **overrides: Any) -> Dict[str, Any]:
    """ELAN keyword arguments for ``sd``.

    Inferred from its shapes, then replaced by ``recorded`` (what the file says) and by the
    ``overrides`` that are not None. When the weights have a mean shift that is not the
    default one at the resulting ``img_range`` (e.g. traiNNer-redux's ``norm: true`` with
    ``img_range=1``), ``rgb_mean`` is set to the shift's mean so that ``ELAN(**config)``
    is the same network even before the weights are loaded.
    """
    config = {**infer_config(sd, path), 'window_sizes': [4, 8, 16]}
    config.update({k: v for k, v in (recorded or {}).items() if k in ELAN_KWARGS})
    config.update({k: v for k, v in overrides.items() if v is not None})
    if 'rgb_mean' not in config and 'sub_mean.bias' in sd:
        mean = (-sd['sub_mean.bias'].double() / config['img_range']).tolist()
        if max(abs(a - b) for a, b in zip(mean, _default_mean(len(mean)))) > 1e-6:
            config['rgb_mean'] = [round(m, 6) for m in mean]
    return config


def variant_name(config: Dict[str, Any]) -> str:
    """``'ELAN-light'``/``'ELAN'`` for a reference configuration, else ``'ELAN (custom)'`` (also for the
    reference sizes with a non-default ablation option)."""
    if any(config.get(k, v) != v for k, v in ABLATION_DEFAULTS.items()):
        return 'ELAN (custom)'
    for name, variant in ELAN_VARIANTS.items():
        if all(list(config.get(k, ())) == list(v) if k == 'window_sizes' else config.get(k) == v
               for k, v in variant.items()):
            return name
    return 'ELAN (custom)'


def build_network(sd: StateDict, config: Dict[str, Any], path: str = 'checkpoint') -> ELAN:
    """Build ``ELAN(**config)`` and load ``sd`` into it strictly; file-named errors on mismatch."""
    try:
        net = ELAN(**config)
    except (TypeError, ValueError) as err:
        raise ElanError(f'{path}: {err}') from err
    missing, unexpected = net.state_dict().keys() - sd.keys(), sd.keys() - net.state_dict().keys()
    if missing or unexpected:
        raise ElanError(f'{path}: keys do not match ELAN({config}): missing {sorted(missing)[:5]}, '
                        f'unexpected {sorted(unexpected)[:5]}')
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise ElanError(f'{path}: tensor shapes do not match ELAN({config}): {err}') from err
    return net


def load_checkpoint(path: str, param_key: Optional[str] = None, unsafe: bool = False,
                    **overrides: Any) -> Tuple[ELAN, Dict[str, Any], str]:
    """Read ``path`` in any supported format and build its ELAN (CPU, train mode as constructed).

    ``overrides`` (ELAN keyword arguments, None = infer) replace inferred and recorded values.

    Returns:
        The network, its ELAN keyword arguments and the file's container (``Checkpoint.source``).
    """
    ck = read_checkpoint(path, param_key, unsafe)
    config = resolve_config(ck.state_dict, path, ck.recorded, **overrides)
    return build_network(ck.state_dict, config, path), config, ck.source


def load_network_from_checkpoint(path: str, device: str = 'cpu', param_key: Optional[str] = None,
                                 unsafe: bool = False, **overrides: Any) -> ELAN:
    """Read ``path`` in any supported format and return its ELAN in eval mode on ``device``.

    ``overrides`` (ELAN keyword arguments, None = infer) replace inferred values.
    """
    return load_checkpoint(path, param_key, unsafe, **overrides)[0].eval().to(device)


def output_format(dst: str, fmt: Optional[str] = None) -> str:
    """``fmt`` checked, or the format ``dst``'s extension implies (``safetensors`` or ``pth``)."""
    fmt = fmt or ('safetensors' if Path(dst).suffix.lower() == '.safetensors' else 'pth')
    if fmt not in OUTPUT_FORMATS:
        raise ElanError(f'--format {fmt}: choose one of {", ".join(OUTPUT_FORMATS)}')
    return fmt


def convert_checkpoint(src: str, dst: str, overwrite: bool = False, unsafe: bool = False,
                       fmt: Optional[str] = None, **overrides: Any) -> Dict[str, Any]:
    """Convert ``src`` (any supported format) to BasicSR's ``{'params': state_dict}`` or to safetensors.

    The weights are loaded strictly into the ELAN they describe before anything is
    written, and ``dst`` is written atomically (never replaced unless ``overwrite``).

    Args:
        fmt: ``'pth'`` (``torch.save``) or ``'safetensors'`` (weights plus the ELAN keyword
            arguments as ``network_g`` metadata); by default chosen by ``dst``'s extension.

    Returns:
        The ELAN keyword arguments, for ``network_g`` in an option file.
    """
    fmt = output_format(dst, fmt)
    net, config, _ = load_checkpoint(src, unsafe=unsafe, **overrides)
    with atomic_path(dst, overwrite=overwrite, flag='--force') as tmp:
        if fmt == 'safetensors':
            write_safetensors(net.state_dict(), tmp, {'type': 'ELAN', **config})
        else:
            torch.save({'params': net.state_dict()}, tmp)
    return config
