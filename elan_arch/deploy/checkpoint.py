"""ELAN networks from checkpoint files: which network a file holds, loading, converting.

The file formats (BasicSR, the authors', traiNNer-redux's ``.pth``/``.safetensors``, this
package's safetensors, bare state_dicts) are read by :mod:`elan_arch.deploy.checkpoint_formats`.

Which network (:func:`network_config`). The tensors tell the sizes, the scale and the ablation kinds
(:func:`infer_config`: an LFE without ``shift_conv.weight`` kernels is ``lfe='conv1x1'``, one with plain
``conv0.weight`` 3x3 kernels ``lfe='conv3x3'``, a GMSA with a LayerNorm (``norm.weight``)
``attention='sa'``; a checkpoint that matches none of these module trees is refused with an
:class:`ElanError` naming what does not fit). ``window_sizes`` and ``shift_windows`` leave no trace in
them. So the configuration comes from, in this order:

1. the caller's ``overrides``: ``opt`` (an option file whose ``network_g`` describes the weights), then
   single options (``window_sizes=[8]``, ``shift_windows=False``, ``img_range=1``); a single option that
   differs from a record or option file is announced;
2. the file's record (:data:`~elan_arch.deploy.checkpoint_formats.NETWORK_G_KEY`: ``network_g`` as an
   option file holds it), which every checkpoint this package writes carries (:func:`network_record`);
3. for a file in a BasicSR run folder (``experiments/<name>/models/``), ``network_g`` of the option file
   BasicSR copied beside the run (:func:`~elan_arch.deploy.option_files.run_network_g`), announced;
4. otherwise the tensors, what another program's file records (traiNNer-redux's hyperparameters), and for
   the rest the reference's values (windows 4, 8, 16; shifted windows, which the authors' and
   traiNNer-redux's networks always use), announced in one line.

A record or option file is checked against the tensors: another scale, size, ablation kind or mean shift
is an :class:`ElanError` naming both. Announcements go to ``announce`` (default: one line on stderr).

Mean shift and pixel range: a state_dict with ``sub_mean``/``add_mean`` is the authors'
network (``img_range`` read from the shift, 255 for their weights); one without them is
traiNNer-redux's default ``norm: false`` ELAN: ``rgb_mean=None, img_range=1``.
traiNNer-redux's ``norm: true`` weights look like the authors' but expect ``img_range=1``,
which their files do not record: pass ``img_range=1`` (``--img-range 1``) for them.
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from elan_arch.archs.elan_arch import ABLATION_DEFAULTS, ELAN, ELAN_VARIANTS
from elan_arch.archs.elan_blocks import DIV2K_RGB_MEAN
from elan_arch.deploy.checkpoint_formats import (NETWORK_G_KEY, Checkpoint, StateDict, read_checkpoint,
                                                 write_safetensors)
from elan_arch.deploy.option_files import network_g_of, run_network_g
from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path

_BLOCK_KEY = re.compile(r'^body\.(\d+)\.modules_gmsa\.gmsa_(\d+)\.project_inp\.0\.weight$')
#: :class:`ELAN`'s runtime switches: how it computes, not which function (never recorded).
RUNTIME_SWITCHES = ('fast_training', 'fused_attention')
#: Keyword arguments of :class:`ELAN` that describe the network (what ``network_g`` may set), and their defaults.
ELAN_DEFAULTS: Dict[str, Any] = {k: p.default for k, p in inspect.signature(ELAN).parameters.items()
                                 if k not in RUNTIME_SWITCHES}
ELAN_KWARGS = tuple(ELAN_DEFAULTS)
#: The options the tensors decide (checked between a record or option file and the weights).
SHAPE_OPTIONS = ('upscale', 'colors', 'c_elan', 'm_elan', 'n_share', 'r_expand', 'lfe', 'attention')
#: The options that leave no trace in the weights.
UNSEEN = ('window_sizes', 'shift_windows')
#: Containers whose network always shifts its windows (the authors' code and traiNNer-redux's have no such option).
ALWAYS_SHIFTED = ("authors'", 'traiNNer-redux')
#: Formats ``convert_checkpoint`` writes.
OUTPUT_FORMATS = ('pth', 'safetensors')
#: What a caller that cannot tell a checkpoint's windows is told to do.
CLI_HINT = 'pass {flags} or --opt FILE if the network was trained otherwise'


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


def complete(network_g: Mapping[str, Any]) -> Dict[str, Any]:
    """Every option of :data:`ELAN_KWARGS`, in that order, for ``network_g`` (absent ones are the constructor's
    defaults; ``type`` and the runtime switches dropped): lists for ``window_sizes`` and ``rgb_mean``, the
    default mean as the constructor applies it for ``colors``."""
    config = {**ELAN_DEFAULTS, **{k: v for k, v in network_g.items() if k in ELAN_DEFAULTS}}
    sizes = config['window_sizes']
    config['window_sizes'] = [int(v) for v in sizes] if isinstance(sizes, (list, tuple)) else [int(sizes)]
    config['img_range'] = float(config['img_range'])
    mean = config['rgb_mean']
    if mean is not None:
        mean = _default_mean(config['colors']) if tuple(mean) == DIV2K_RGB_MEAN else mean
        config['rgb_mean'] = [float(v) for v in mean]
    return config


def network_record(net: ELAN) -> Dict[str, Any]:
    """The record of a float32 ``net`` that checkpoints carry: ``{'type': 'ELAN', **options}`` with every
    option of :data:`ELAN_KWARGS` (what ``network_g`` would hold to build it), plain YAML/JSON data."""
    sd = net.state_dict()
    config = {**infer_config(sd, type(net).__name__), 'window_sizes': list(net.window_sizes),
              'shift_windows': net.shift_windows, 'img_range': net.img_range, 'lfe': net.lfe,
              'attention': net.attention, 'rgb_mean': None}
    if 'sub_mean.bias' in sd:
        config['rgb_mean'] = [round(v, 6) for v in (-sd['sub_mean.bias'].double().cpu() / net.img_range).tolist()]
    return {'type': 'ELAN', **complete(config)}


def announce_on_stderr(message: str) -> None:
    """The default ``announce`` of the readers: one line on stderr."""
    print(f'elan: {message}', file=sys.stderr, flush=True)


def _mean_shift_of(config: Dict[str, Any]) -> Optional[torch.Tensor]:
    """``sub_mean.bias`` of ``ELAN(**config)`` (float32), or None without a mean shift."""
    if config['rgb_mean'] is None:
        return None
    return -config['img_range'] * torch.tensor(config['rgb_mean'], dtype=torch.float32)


def _checked(network_g: Mapping[str, Any], sd: StateDict, path: str, where: str, fix: str) -> Dict[str, Any]:
    """:func:`complete` ``network_g`` (from ``where``), refused with ElanError where the tensors disagree."""
    unknown = sorted(set(network_g) - set(ELAN_KWARGS) - set(RUNTIME_SWITCHES) - {'type'})
    if unknown:
        raise ElanError(f'{path}: {where} has options ELAN does not take: {", ".join(unknown)} (its options are '
                        f'{", ".join(ELAN_KWARGS)})')
    try:
        config = complete(network_g)
    except (TypeError, ValueError) as err:
        raise ElanError(f'{path}: {where} is not a valid ELAN configuration ({err})') from err
    seen = {**{k: ABLATION_DEFAULTS[k] for k in ('lfe', 'attention')}, **infer_config(sd, path)}
    differ: List[str] = [f'{k} {config[k]!r} there, {seen[k]!r} in the weights' for k in SHAPE_OPTIONS
                         if config[k] != seen[k]]
    shift, held = _mean_shift_of(config), sd.get('sub_mean.bias')
    if (shift is None) != (held is None):
        differ.append('a mean shift there, none in the weights' if held is None else
                      'no mean shift there (rgb_mean: ~), one in the weights')
    elif shift is not None and not torch.allclose(held.double().cpu(), shift.double(), rtol=1e-6,
                                                  atol=1e-6 * config['img_range']):
        differ.append(f'img_range {config["img_range"]:g} with rgb_mean {config["rgb_mean"]} there (sub_mean.bias '
                      f'{[round(v, 4) for v in shift.tolist()]}), sub_mean.bias '
                      f'{[round(v, 4) for v in held.tolist()]} in the weights')
    if differ:
        raise ElanError(f'{path}: {where} does not describe these weights: {"; ".join(differ)}. {fix}')
    return config


def _flags(keys: List[str]) -> str:
    return ' / '.join({'window_sizes': '--window-sizes', 'shift_windows': '--no-shift-windows'}[k] for k in keys)


def network_config(ck: Checkpoint, path: str, overrides: Optional[Mapping[str, Any]] = None,
                   announce: Optional[Callable[[str], None]] = None, hint: str = CLI_HINT) -> Dict[str, Any]:
    """The complete ELAN options (:func:`complete`) of the weights ``ck`` read from ``path``: the order
    of the module docstring (caller, record, run folder's option file, announced assumption).

    Args:
        overrides: ELAN options (None values ignored) and ``opt``, an option file whose ``network_g``
            describes the weights (``elan_arch.cli.options.network_overrides`` builds it from the command line).
        announce: Receives each announcement (one line; default :func:`announce_on_stderr`).
        hint: The advice ending an assumption (``{flags}``: the options that would settle it).

    Raises:
        ElanError: not an ELAN, or a record / option file that the tensors contradict.
    """
    say = announce or announce_on_stderr
    told = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(told) - set(ELAN_KWARGS) - {'opt'})
    if unknown:
        raise ElanError(f'{path}: {", ".join(unknown)} are not ELAN options (its options are {", ".join(ELAN_KWARGS)})')
    opt = told.pop('opt', None)
    if opt is not None:
        config = _checked(network_g_of(str(opt)), ck.state_dict, path, f'network_g of {opt}',
                          'Name the option file the weights were trained with.')
        where = f'network_g of {opt}'
    elif ck.network_g is not None:
        config = _checked(ck.network_g, ck.state_dict, path, f'its {NETWORK_G_KEY} record',
                          'The file was altered after it was written; pass --opt FILE (Python: opt=FILE) with the '
                          'option file the weights were trained with.')
        where = f'its {NETWORK_G_KEY} record'
    else:
        run = run_network_g(path)
        if run is None:
            config = complete(resolve_config(ck.state_dict, path, ck.recorded, **told))
            assumed = [k for k in UNSEEN if k not in ck.recorded and k not in told
                       and not (k == 'shift_windows' and ck.source in ALWAYS_SHIFTED)]
            if assumed:
                what = ' and '.join([f'window_sizes {config["window_sizes"]}'] * ('window_sizes' in assumed)
                                    + ['shifted windows'] * ('shift_windows' in assumed))
                say(f'{path}: assumed {what}: the weights cannot tell; {hint.format(flags=_flags(assumed))}')
            return config
        config = _checked(run[1], ck.state_dict, path, f'network_g of {run[0]}, the run\'s option file',
                          'Was the option file changed after training? Pass --opt FILE (Python: opt=FILE) with the '
                          'option file the weights were trained with.')
        where = f'network_g of {run[0]}'
        say(f'{path}: the network of {run[0]} (the run\'s option file; the checkpoint records none)')
    changed = {k: v for k, v in told.items() if config[k] != complete({**config, k: v})[k]}
    for key, value in changed.items():
        say(f'{path}: {key} {value!r} as told, where {where} has {config[key]!r}')
    config = complete({**config, **changed})
    if 'img_range' in changed and 'sub_mean.bias' in ck.state_dict:  # the shift stays the file's
        config['rgb_mean'] = [round(v, 6) for v in (-ck.state_dict['sub_mean.bias'].double()
                                                    / config['img_range']).tolist()]
    return config


def load_checkpoint(path: str, param_key: Optional[str] = None, unsafe: bool = False,
                    overrides: Optional[Mapping[str, Any]] = None, announce: Optional[Callable[[str], None]] = None,
                    **options: Any) -> Tuple[ELAN, Dict[str, Any], str]:
    """Read ``path`` in any supported format and build its ELAN (CPU, train mode as constructed).

    ``overrides`` and ``options`` (ELAN keyword arguments, None = not given; ``opt`` = an option file)
    are the caller's word on the network (:func:`network_config`); ``announce`` receives what was assumed.

    Returns:
        The network, its complete ELAN keyword arguments and the file's container (``Checkpoint.source``).
    """
    ck = read_checkpoint(path, param_key, unsafe)
    net, config = build_announced(ck, path, {**(overrides or {}), **options}, announce)
    return net, config, ck.source


def build_announced(ck: Checkpoint, path: str, overrides: Optional[Mapping[str, Any]] = None,
                    announce: Optional[Callable[[str], None]] = None,
                    hint: str = CLI_HINT) -> Tuple[ELAN, Dict[str, Any]]:
    """The ELAN of ``ck`` (:func:`network_config`, then :func:`build_network`) and its options; what
    was assumed is announced once the network is built (a file that fails to load announces nothing)."""
    notes: List[str] = []
    config = network_config(ck, path, overrides, notes.append, hint)
    net = build_network(ck.state_dict, config, path)
    for note in notes:
        (announce or announce_on_stderr)(note)
    return net, config


def load_network_from_checkpoint(path: str, device: str = 'cpu', param_key: Optional[str] = None,
                                 unsafe: bool = False, overrides: Optional[Mapping[str, Any]] = None,
                                 announce: Optional[Callable[[str], None]] = None, **options: Any) -> ELAN:
    """Read ``path`` in any supported format and return its ELAN in eval mode on ``device``
    (the arguments as :func:`load_checkpoint`)."""
    return load_checkpoint(path, param_key, unsafe, overrides, announce, **options)[0].eval().to(device)


def output_format(dst: str, fmt: Optional[str] = None) -> str:
    """``fmt`` checked, or the format ``dst``'s extension implies (``safetensors`` or ``pth``)."""
    fmt = fmt or ('safetensors' if Path(dst).suffix.lower() == '.safetensors' else 'pth')
    if fmt not in OUTPUT_FORMATS:
        raise ElanError(f'--format {fmt}: choose one of {", ".join(OUTPUT_FORMATS)}')
    return fmt


def convert_checkpoint(src: str, dst: str, overwrite: bool = False, unsafe: bool = False,
                       fmt: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                       announce: Optional[Callable[[str], None]] = None, **options: Any) -> Dict[str, Any]:
    """Convert ``src`` (any supported format) to BasicSR's ``{'params': state_dict, 'network_g': record}``
    or to safetensors (``network_g`` in the metadata).

    The weights are loaded strictly into the ELAN they describe (:func:`load_checkpoint`'s arguments)
    before anything is written, and ``dst`` is written atomically (never replaced unless ``overwrite``).

    Args:
        fmt: ``'pth'`` (``torch.save``) or ``'safetensors'``; by default chosen by ``dst``'s extension.

    Returns:
        The complete ELAN keyword arguments, for ``network_g`` in an option file.
    """
    fmt = output_format(dst, fmt)
    net, config, _ = load_checkpoint(src, unsafe=unsafe, overrides=overrides, announce=announce, **options)
    with atomic_path(dst, overwrite=overwrite, flag='--force') as tmp:
        if fmt == 'safetensors':
            write_safetensors(net.state_dict(), tmp, {'type': 'ELAN', **config})
        else:
            torch.save({'params': net.state_dict(), NETWORK_G_KEY: {'type': 'ELAN', **config}}, tmp)
    return config
