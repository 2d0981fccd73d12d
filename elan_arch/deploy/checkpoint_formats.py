"""Checkpoint files: which container a file is, and the weights and settings it holds.

:func:`read_checkpoint` reads, without running code from the file:

* PyTorch pickles (``torch.save``, any extension), unpickled with ``weights_only``:

  - BasicSR: ``{'params': state_dict}`` and/or ``{'params_ema': state_dict}``; this package's (the
    ``basicsr`` command's ``net_g_*.pth``, ``elan convert``) add ``'network_g'``: the network's record
    (:data:`NETWORK_G_KEY`), which BasicSR's ``load_network`` never reads (it takes ``[param_key]``);
  - the authors' training code: ``{'epoch', 'model_state_dict', 'optimizer_state_dict',
    'scheduler_state_dict', 'stat_dict'}``, every weight key prefixed ``module.``;
  - traiNNer-redux's ``.pth``: ``{'metadata': {hyperparameters}, 'params': state_dict}``
    (``'params_ema'`` for its EMA model), or a bare state_dict when the network records no
    hyperparameters (its ELAN does not);
  - a bare state_dict.

* safetensors files (recognised by their header, whatever the extension): a flat
  name -> tensor map plus a str -> str metadata map, read with no pickle at all:

  - this package's (``elan convert --format safetensors``): metadata ``network_g``, the
    JSON of the network's record;
  - traiNNer-redux's (its default format): optional metadata ``metadata``, the JSON of the
    architecture's hyperparameters; its ELAN records none.

traiNNer-redux's ``ELAN(scale, colors, rgb_range, norm, window_sizes, m_elan, c_elan, n_share,
r_expand)`` keeps the authors' module tree but works on [0, 1] without multiplying by
``rgb_range``; with ``norm=False`` (its default) there is no mean shift, with ``norm=True``
``x - rgb_range * mean`` on [0, 1] inputs. :func:`elan_kwargs_from_trainner` maps its
hyperparameters to this package's ``ELAN`` arguments.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from elan_arch.archs.elan_blocks import DIV2K_RGB_MEAN
from elan_arch.utils.errors import ElanError

StateDict = Dict[str, Tensor]
PARAM_KEYS = ('params_ema', 'params', 'model_state_dict', 'state_dict')
#: The entry of a ``torch.save`` dict (and of safetensors metadata, as JSON) that records the network:
#: ``network_g`` as an option file would hold it (``type: ELAN`` and the constructor's options; absent
#: options are the constructor's defaults).
NETWORK_G_KEY = 'network_g'
#: safetensors metadata entry (and ``.pth`` dict entry) holding traiNNer-redux's hyperparameters.
TRAINNER_META_KEY = 'metadata'


@dataclass
class Checkpoint:
    """The network weights of one file and what the file says about them.

    Attributes:
        state_dict: Weights without ``module.`` prefixes.
        source: The container, for messages: ``BasicSR``, ``authors'``, ``traiNNer-redux``,
            ``elan-arch safetensors``, ``safetensors`` or ``state_dict``.
        recorded: ELAN keyword arguments another program's file records (traiNNer-redux's hyperparameters;
            empty when it records none).
        network_g: This package's record of the network (:data:`NETWORK_G_KEY`), or None.
    """
    state_dict: StateDict
    source: str
    recorded: Dict[str, Any] = field(default_factory=dict)
    network_g: Optional[Dict[str, Any]] = None


def _numpy_safe_globals() -> List[Any]:
    """NumPy scalars and dtypes: plain data that the authors' ``stat_dict`` holds (e.g. PSNR history)."""
    core = getattr(np, '_core', None) or np.core
    return [core.multiarray.scalar, np.dtype] + [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]


def _torch_load(path: str, unsafe: bool) -> Any:
    """``torch.load`` on CPU with file-named errors for truncated and non-torch files.

    Without ``unsafe`` only tensors, containers and NumPy scalars are unpickled
    (``weights_only``), so a checkpoint cannot run code on load.
    """
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


def is_safetensors(path: str) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length, then ``{``."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return (len(head) == 9 and head[8:9] == b'{'
            and 0 < int.from_bytes(head[:8], 'little') <= os.path.getsize(path) - 8)


def _read_safetensors(path: str) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise ElanError(f'{path}: not a readable safetensors file ({str(err).splitlines()[0]})') from err
    try:
        if NETWORK_G_KEY in meta:
            record = checked_record(json.loads(meta[NETWORK_G_KEY]), path)
            return Checkpoint(sd, 'elan-arch safetensors', network_g=record)
        if TRAINNER_META_KEY in meta:
            return Checkpoint(sd, 'traiNNer-redux', elan_kwargs_from_trainner(json.loads(meta[TRAINNER_META_KEY])))
    except (json.JSONDecodeError, AttributeError) as err:
        raise ElanError(f'{path}: safetensors metadata is not the JSON object expected ({err})') from err
    return Checkpoint(sd, 'safetensors')


def _unwrap(obj: Any, path: str, param_key: Optional[str]) -> Checkpoint:
    """The state_dict inside a ``torch.load`` result and the container it came in."""
    if not isinstance(obj, Mapping):
        raise ElanError(f'{path}: expected a dict checkpoint, found {type(obj).__name__}')
    recorded: Dict[str, Any] = {}
    source = 'state_dict'
    if isinstance(obj.get(TRAINNER_META_KEY), Mapping):
        source, recorded = 'traiNNer-redux', elan_kwargs_from_trainner(obj[TRAINNER_META_KEY])
    elif 'model_state_dict' in obj:
        source = "authors'"
    elif 'params' in obj or 'params_ema' in obj:
        source = 'BasicSR'
    network_g = checked_record(obj[NETWORK_G_KEY], path) if NETWORK_G_KEY in obj else None
    if param_key is not None:
        if param_key not in obj:
            raise ElanError(f'{path}: no entry {param_key!r}; entries are {sorted(map(str, obj))}')
        obj = obj[param_key]
    else:
        obj = next((obj[k] for k in PARAM_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ElanError(f'{path}: no network weights found (expected one of the entries {list(PARAM_KEYS)} '
                        'or a bare state_dict of tensors)')
    return Checkpoint(dict(obj), source, recorded, network_g)


def checked_record(network_g: Any, path: str) -> Dict[str, Any]:
    """A file's :data:`NETWORK_G_KEY` entry, checked to be an ELAN's options."""
    if not isinstance(network_g, Mapping) or network_g.get('type', 'ELAN') != 'ELAN':
        raise ElanError(f'{path}: its {NETWORK_G_KEY!r} entry is not the record of an ELAN network ({network_g!r})')
    return {str(k): v for k, v in network_g.items()}


def read_checkpoint(path: str, param_key: Optional[str] = None, unsafe: bool = False) -> Checkpoint:
    """Read the network weights of ``path`` (any format in the module docstring).

    Args:
        path: Checkpoint file.
        param_key: Entry of a ``torch.save`` dict to take; by default the first present of
            :data:`PARAM_KEYS` (so ``params_ema`` wins over ``params``, as BasicSR's test option does).
        unsafe: Allow full unpickling (only for trusted files; safetensors never need it).

    Raises:
        ElanError: missing, damaged or weightless files, naming ``path``.
    """
    if not os.path.isfile(path):
        raise ElanError(f'{path}: no such checkpoint file')
    if is_safetensors(path):
        ck = _read_safetensors(path)
    else:
        ck = _unwrap(_torch_load(path, unsafe), path, param_key)
    ck.state_dict = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in ck.state_dict.items()}
    return ck


def elan_kwargs_from_trainner(hyper: Mapping[str, Any]) -> Dict[str, Any]:
    """This package's ELAN keyword arguments for traiNNer-redux ELAN hyperparameters.

    ``scale`` becomes ``upscale``; ``norm``/``rgb_range`` become ``img_range=1`` (their network
    never rescales its input) and ``rgb_mean`` (None without ``norm``, else ``rgb_range * mean``).
    Hyperparameters this mapping does not know are ignored; shapes come from the weights.
    """
    kwargs: Dict[str, Any] = {'upscale': hyper['scale']} if 'scale' in hyper else {}
    kwargs.update({k: hyper[k] for k in ('colors', 'window_sizes', 'm_elan', 'c_elan', 'n_share', 'r_expand')
                   if k in hyper})
    if 'norm' in hyper:
        rgb_range = float(hyper.get('rgb_range', 255))
        kwargs['img_range'] = 1.0
        kwargs['rgb_mean'] = [rgb_range * m for m in DIV2K_RGB_MEAN] if hyper['norm'] else None
    return kwargs


def write_safetensors(state_dict: Mapping[str, Tensor], path: os.PathLike, network_g: Mapping[str, Any]) -> None:
    """Write ``state_dict`` as safetensors with ``network_g`` (JSON) in the metadata.

    ``path`` is written directly: wrap the call in :func:`elan_arch.utils.fileio.atomic_path`.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={'format': 'pt', NETWORK_G_KEY: json.dumps(dict(network_g))})
