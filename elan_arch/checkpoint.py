"""Reading ELAN checkpoints in either format, and converting the authors' format to BasicSR's.

Formats understood by :func:`read_state_dict`:

* BasicSR: ``{'params': state_dict}`` and/or ``{'params_ema': state_dict}``.
* The authors' training code: ``{'epoch', 'model_state_dict', 'optimizer_state_dict',
  'scheduler_state_dict', 'stat_dict'}`` where every key of ``model_state_dict``
  starts with ``module.`` (the model was wrapped in ``nn.DataParallel``).
* A bare state_dict.

The network configuration is inferred from tensor shapes by :func:`infer_config`;
``window_sizes`` leaves no trace in the weights and defaults to the reference's.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

import torch
from torch import Tensor

from .archs.elan_arch import DIV2K_RGB_MEAN, ELAN
from .errors import ElanError
from .fileio import atomic_path

StateDict = Dict[str, Tensor]
PARAM_KEYS = ('params_ema', 'params', 'model_state_dict', 'state_dict')
_BLOCK_KEY = re.compile(r'^body\.(\d+)\.modules_gmsa\.gmsa_(\d+)\.project_inp\.0\.weight$')


def _numpy_safe_globals() -> List[Any]:
    """NumPy scalars and dtypes: plain data that the authors' ``stat_dict`` holds (e.g. PSNR history)."""
    core = getattr(np, '_core', None) or np.core
    return [core.multiarray.scalar, np.dtype] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]


def _torch_load(path: str, unsafe: bool) -> Any:
    """``torch.load`` on CPU with file-named errors for missing, truncated and non-torch files.

    Without ``unsafe`` only tensors, containers and NumPy scalars are unpickled
    (``weights_only``), so a checkpoint cannot run code on load.
    """
    if not os.path.isfile(path):
        raise ElanError(f'{path}: no such checkpoint file')
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location='cpu', weights_only=not unsafe)
    except pickle.UnpicklingError as err:
        if str(err).startswith('Weights only load failed') and 'Unsupported global' in str(err):
            raise ElanError(f'{path}: the checkpoint stores Python objects beyond tensors and plain containers, '
                            'which are not loaded by default because unpickling them can run code. If you trust '
                            'the file, pass --unsafe-load (Python: unsafe=True).') from err
        raise ElanError(f'{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0]})') from err
    except Exception as err:  # torch.load raises RuntimeError, KeyError, EOFError... for damaged files
        raise ElanError(f'{path}: not a readable PyTorch checkpoint, or truncated '
                        f'({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""})') from err


def read_state_dict(path: str, param_key: Optional[str] = None, unsafe: bool = False) -> StateDict:
    """Return the network state_dict stored in ``path``, without ``module.`` prefixes.

    Args:
        path: Checkpoint file in any format listed in the module docstring.
        param_key: Entry to take; by default the first present of :data:`PARAM_KEYS`
            (so ``params_ema`` wins over ``params``, as BasicSR's test option does).
        unsafe: Allow full unpickling (only for trusted files).
    """
    obj = _torch_load(path, unsafe)
    if not isinstance(obj, Mapping):
        raise ElanError(f'{path}: expected a dict checkpoint, found {type(obj).__name__}')
    if param_key is not None:
        if param_key not in obj:
            raise ElanError(f'{path}: no entry {param_key!r}; entries are {sorted(map(str, obj))}')
        obj = obj[param_key]
    else:
        for key in PARAM_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ElanError(f'{path}: no network weights found (expected one of the entries {list(PARAM_KEYS)} '
                        'or a bare state_dict of tensors)')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in obj.items()}


def _shape(sd: StateDict, key: str, ndim: int, path: str) -> Tuple[int, ...]:
    if key not in sd:
        raise ElanError(f'{path}: not an ELAN checkpoint, key {key!r} is missing')
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise ElanError(f'{path}: not an ELAN checkpoint, {key!r} has shape {shape}')
    return shape


def infer_config(sd: StateDict, path: str = 'checkpoint') -> Dict[str, Any]:
    """Infer the ELAN keyword arguments (all but ``window_sizes``) from a state_dict's shapes.

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
    expand = _shape(sd, 'body.0.modules_lfe.lfe_0.conv0.shift_conv.conv1x1.weight', 4, path)[0]
    if expand % c_elan:
        raise ElanError(f'{path}: LFE width {expand} is not a multiple of c_elan={c_elan}')
    img_range = 255.
    if 'sub_mean.bias' in sd and colors == 3:
        img_range = float(round(-sd['sub_mean.bias'][0].item() / DIV2K_RGB_MEAN[0], 3))
    return dict(upscale=upscale, colors=colors, c_elan=c_elan, m_elan=n_blocks * (1 + n_share),
                n_share=n_share, r_expand=expand // c_elan, img_range=img_range)


def resolve_config(sd: StateDict, path: str = 'checkpoint', **overrides: Any) -> Dict[str, Any]:
    """ELAN keyword arguments for ``sd``: inferred from its shapes, then ``overrides`` that are not None."""
    config = {**infer_config(sd, path), 'window_sizes': [4, 8, 16]}
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def build_network(sd: StateDict, config: Dict[str, Any], path: str = 'checkpoint') -> ELAN:
    """Build ``ELAN(**config)`` and load ``sd`` into it strictly; file-named errors on mismatch."""
    try:
        net = ELAN(**config)
    except ValueError as err:
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


def load_network_from_checkpoint(path: str, device: str = 'cpu', param_key: Optional[str] = None,
                                 unsafe: bool = False, **overrides: Any) -> ELAN:
    """Read ``path`` in any supported format and return its ELAN in eval mode on ``device``.

    ``overrides`` (ELAN keyword arguments, None = infer) replace inferred values.
    """
    sd = read_state_dict(path, param_key, unsafe)
    return build_network(sd, resolve_config(sd, path, **overrides), path).eval().to(device)


def convert_checkpoint(src: str, dst: str, overwrite: bool = False, unsafe: bool = False,
                       **overrides: Any) -> Dict[str, Any]:
    """Convert ``src`` (authors' or any supported format) to BasicSR's ``{'params': state_dict}``.

    The weights are loaded strictly into the ELAN they describe before anything is
    written, and ``dst`` is written atomically (never replaced unless ``overwrite``).

    Returns:
        The ELAN keyword arguments, for ``network_g`` in an option file.
    """
    sd = read_state_dict(src, unsafe=unsafe)
    config = resolve_config(sd, src, **overrides)
    net = build_network(sd, config, src)
    with atomic_path(dst, overwrite=overwrite, flag='--force') as tmp:
        torch.save({'params': net.state_dict()}, tmp)
    return config
