"""Models of ``elan compare`` (:mod:`elan_arch.compare.specs`) made callable: LR image in, SR image out.

Every model becomes a :class:`Model` whose ``upscale`` takes the LR image as ``basicsr test`` reads it
(uint8 BGR, to float32 RGB in [0, 1]) and returns what ``basicsr test`` would save and measure: the output
clamped to [0, 1], times 255, rounded half to even, as uint8 BGR (``basicsr.utils.tensor2img``'s arithmetic,
which :func:`elan_arch.inference.upscale.upscale_array` shares). Networks run through ``upscale_array``, in
tiles with ``--tile``. ELAN checkpoints and exported models get their runtime from
:func:`elan_arch.inference.backends.load_backend` (as ``elan upscale`` does); other archs are built by BasicSR's
``ARCH_REGISTRY`` from ``network_g``.

Loading checks the scale: a network is run once on a small probe, and one whose output is not ``scale`` times
its input is refused with a message naming its file (the other models are still compared).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from elan_arch.compare.specs import ModelSpec
from elan_arch.utils.errors import ElanError, one_line
from elan_arch.utils.fileio import shown_path

#: Seed of randomly initialised networks (``--net`` without ``weights``), so that a page can be made again.
RANDOM_INIT_SEED = 0


@dataclass
class RunSettings:
    """How networks run: ``device``/``dtype`` (:func:`elan_arch.inference.upscale.select_device`), tiles."""

    device: Any
    dtype: Any
    tile: int = 0
    overlap: int = 32
    #: What ``--opt``/``--window-sizes``/... say about the ELAN checkpoints
    #: (:func:`elan_arch.cli.options.network_overrides`).
    overrides: Optional[Dict[str, Any]] = None


@dataclass
class Model:
    """A loaded model: ``upscale`` (uint8 BGR LR -> uint8 BGR SR), its parameter count (None: unknown or
    none) and a one-line description for the page."""

    name: str
    upscale: Callable[[np.ndarray], np.ndarray]
    params: Optional[int]
    about: str


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(lr, scale, 'bicubic')`` of a uint8 image (:func:`basicsr.utils.matlab_functions.imresize`
    in float64), rounded to uint8 as ``basicsr`` rounds its outputs (``make demo``'s bicubic line)."""
    from basicsr.utils.matlab_functions import imresize

    out = imresize(lr.astype(np.float64) / 255., scale)
    return np.clip(np.round(out * 255.), 0, 255).astype(np.uint8)


def _network_upscale(net: Callable, scale: int, pad_multiple: int, settings: RunSettings) -> Callable:
    from elan_arch.inference.upscale import upscale_array

    def upscale(lr: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(lr[..., ::-1]).astype(np.float32) / 255.
        out = upscale_array(net, rgb, scale, pad_multiple, tile=settings.tile, overlap=settings.overlap,
                            out_dtype=np.uint8)
        return np.ascontiguousarray(out[..., ::-1])

    return upscale


def _probe(upscale: Callable[[np.ndarray], np.ndarray], scale: int, size: int, what: str) -> None:
    """Run ``upscale`` on a ``size``-pixel square (also a warm-up before timing); ElanError naming ``what``
    if it fails or its scale is not ``scale``."""
    lr = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    try:
        out = upscale(lr)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ElanError(f'{what}: fails on a {size}x{size} test input ({one_line(err)})') from err
    if out.shape[:2] != (size * scale, size * scale):
        got = out.shape[0] / size
        raise ElanError(f'{what}: upscales x{got:g}, not x{scale} (a checkpoint of another scale?); '
                        'compare models of one scale')


def _state_dict(path: Path, param_key: Optional[str]) -> Dict[str, Any]:
    from elan_arch.deploy.checkpoint_formats import read_checkpoint

    return read_checkpoint(str(path), param_key).state_dict


def build_basicsr_network(network_g: Dict[str, Any], weights: Optional[Path], param_key: Optional[str],
                          strict: bool, what: str):
    """``network_g`` built by BasicSR's ``ARCH_REGISTRY`` with ``weights`` loaded (``param_key``; by default
    ``params_ema``, else ``params``, else a bare state_dict), or randomly initialised (seeded) without weights."""
    import torch
    from basicsr.archs import build_network

    if weights is not None and not weights.is_file():
        raise ElanError(f'{what}: weights {shown_path(weights)} not found')
    torch.manual_seed(RANDOM_INIT_SEED)
    try:
        net = build_network(copy.deepcopy(dict(network_g)))
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise ElanError(f'{what}: network_g {network_g} cannot be built ({one_line(err)})') from err
    if weights is not None:
        try:
            net.load_state_dict(_state_dict(weights, param_key), strict=strict)
        except RuntimeError as err:
            detail = ' '.join(str(err).split())
            raise ElanError(f'{weights}: its weights do not fit {network_g.get("type")} of {what} '
                            f'({detail[:400]}{"..." if len(detail) > 400 else ""})') from err
    return net


def _options_network(spec: ModelSpec):
    """(network, description, page name) of an option file's ``network_g`` and ``path:pretrain_network_g``."""
    import yaml

    path = spec.path
    if not path.is_file():
        raise ElanError(f'-m {spec.argument}: option file {shown_path(path)} not found')
    opt = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    if not isinstance(opt.get('network_g'), dict):
        raise ElanError(f'{path}: no network_g in this option file')
    paths = opt.get('path') or {}
    weights = paths.get('pretrain_network_g')
    net = build_basicsr_network(opt['network_g'], Path(weights) if weights else None, paths.get('param_key_g'),
                                bool(paths.get('strict_load_g', True)), str(path))
    about = f'{opt["network_g"]["type"]} of {path.name}' + (f', weights {weights}' if weights else ', random init')
    return net, about, opt.get('name')


def _backend_network(spec: ModelSpec, scale: int, settings: RunSettings):
    """(callable, description, parameter count) of a checkpoint or exported model, through
    :func:`elan_arch.inference.backends.load_backend` (the one place a runtime is chosen); ElanError naming the
    file for another scale."""
    import torch

    from elan_arch.inference.backends import load_backend

    if not spec.path.exists():
        raise ElanError(f'-m {spec.argument}: {shown_path(spec.path)} not found')
    kind = 'weights' if spec.kind == 'checkpoint' else spec.kind
    extra = {'half': settings.dtype == torch.float16, 'overrides': settings.overrides} if kind == 'weights' else {}
    backend = load_backend(**{kind: str(spec.path)}, device=str(settings.device), **extra)
    net, model_scale, where = backend.net, backend.scale, backend.where
    if model_scale != scale:
        raise ElanError(f'{spec.path}: an x{model_scale} model, not x{scale}; compare models of one scale '
                        f'(or run with --scale {model_scale})')
    params = sum(p.numel() for p in net.parameters()) if isinstance(net, torch.nn.Module) else None
    what = 'ELAN checkpoint' if kind == 'weights' else f'{spec.kind} model'
    return net, f'{what} {spec.path.name}, {where}', params


def load_model(spec: ModelSpec, name: str, scale: int, settings: RunSettings) -> Model:
    """Load ``spec`` as :class:`Model` ``name`` for ``scale``; ElanError naming its file when it cannot be
    read or built, or is of another scale."""
    from torch import nn

    from elan_arch.inference.upscale import prepare_network

    if spec.kind == 'bicubic':
        return Model(name, lambda lr: bicubic_upscale(lr, scale), None, f'MATLAB bicubic x{scale}')
    what = str(spec.path) if spec.path is not None else f'--net {spec.argument}'
    params = None
    if spec.kind in ('checkpoint', 'onnx', 'openvino', 'ncnn'):
        net, about, params = _backend_network(spec, scale, settings)
    elif spec.kind == 'options':
        net, about, _ = _options_network(spec)
    else:
        net = build_basicsr_network(spec.network, spec.weights, spec.param_key, spec.strict, what)
        about = f'{spec.network["type"]}' + (f', weights {spec.weights}' if spec.weights else ', random init')
    if isinstance(net, nn.Module) and params is None:  # a BasicSR arch: not yet on its device
        params = sum(p.numel() for p in net.parameters())
        net = prepare_network(net, settings.device, settings.dtype)
    pad_multiple = int(getattr(net, 'pad_multiple', 0) or 16)
    upscale = _network_upscale(net, scale, pad_multiple, settings)
    _probe(upscale, scale, max(pad_multiple * 2, 32), what)
    return Model(name, upscale, params, about)

