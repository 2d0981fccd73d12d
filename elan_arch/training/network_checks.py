"""Start-up checks of the networks an option file names: their options and their pretrained weights.

basicsr builds ``network_g`` with ``ARCH_REGISTRY.get(type)(**options)`` and loads
``path.pretrain_network_g`` into it only once the run's folders exist, so a misspelt option
(``c_elann: 60``), a value the constructor refuses (``window_sizes: [4, 8, 15]``) or the weights of another
scale or variant ended in a ``TypeError``, a ``ValueError`` or a page of ``size mismatch for ...``
tracebacks. :func:`check_network_options` and :func:`pretrained_mismatch` say the same in one line,
before anything is made (:mod:`elan_arch.training.startup` calls them).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Dict, List, Optional, Tuple

from elan_arch.utils.errors import ElanError

#: The ELAN options that decide the shapes of its tensors (what a checkpoint can be checked against).
SHAPE_OPTIONS = ('upscale', 'colors', 'c_elan', 'm_elan', 'n_share', 'r_expand', 'lfe', 'attention')


def _constructor(name: str) -> Optional[Any]:
    from basicsr.utils.registry import ARCH_REGISTRY

    for key in (name, f'{name}_basicsr'):  # Registry.get also tries the suffixed name
        if key in ARCH_REGISTRY:
            return ARCH_REGISTRY.get(key)
    return None


def _parameters(arch: Any) -> Optional[Dict[str, inspect.Parameter]]:
    """The keyword parameters of ``arch``'s constructor, or None when it takes ``**kwargs`` (anything goes)."""
    try:
        params = dict(inspect.signature(arch.__init__).parameters)
    except (TypeError, ValueError):
        return None
    params.pop('self', None)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_network_options(opt: Dict[str, Any]) -> None:
    """Every ``network_*`` option block must name only options its architecture's constructor takes, and all
    the ones it requires, with values it accepts (:func:`constructor_refusal`); :class:`ElanError` naming the
    block, the key and the valid keys, or the constructor's rule, otherwise."""
    for block, options in opt.items():
        if not block.startswith('network_') or not isinstance(options, dict) or not options.get('type'):
            continue
        arch = _constructor(str(options['type']))
        params = _parameters(arch) if arch is not None else None
        if params is None:
            continue
        given = [key for key in options if key != 'type']
        valid = ', '.join(params)
        for key in given:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                guess = f' (did you mean {close[0]}?)' if close else ''
                raise ElanError(f'option {block}:{key}: {options["type"]} has no option {key!r}{guess}; its options '
                                f'are {valid}')
        missing = [k for k, p in params.items() if p.default is p.empty and k not in given]
        if missing:
            raise ElanError(f'option {block}: {options["type"]} needs {", ".join(missing)} (its options are {valid})')
        refused = constructor_refusal(arch, {key: options[key] for key in given})
        if refused:
            raise ElanError(f'option {block}: {refused}; change it in the option file (or --force_yml)')


def constructor_refusal(arch: Any, options: Dict[str, Any]) -> Optional[str]:
    """The rule the constructor states when it refuses ``options`` (its ``ValueError``/``TypeError``), or None.

    The network is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic), so even a large
    one costs nothing; a refusal there is confirmed by building it for real, since an operation that the meta
    device lacks is no fault of the options. Other errors are left for basicsr to meet as before."""
    import torch

    try:
        with torch.device('meta'):
            arch(**options)
        return None
    except (ValueError, TypeError) as err:
        meta_error = err
    except Exception:  # noqa: BLE001  (not the options' fault on the meta device)
        return None
    try:
        arch(**options)
    except (ValueError, TypeError) as err:
        return str(err) or str(meta_error)
    return None


def _state_dict(loaded: Any, param_key: Optional[str]) -> Any:
    """What basicsr's ``load_network`` takes from a loaded file: ``loaded[param_key]`` (``params`` when
    ``param_key`` is missing), ``module.`` prefixes removed."""
    if param_key is not None and isinstance(loaded, dict):
        if param_key not in loaded and 'params' in loaded:
            param_key = 'params'
        loaded = loaded.get(param_key, loaded)
    if not isinstance(loaded, dict):
        return loaded
    return {(k[len('module.'):] if isinstance(k, str) and k.startswith('module.') else k): v
            for k, v in loaded.items()}


def _described(config: Dict[str, Any]) -> str:
    """``ELAN-light x4``, or for another configuration ``ELAN (custom) x4 (c_elan=..., ...)``."""
    from elan_arch.deploy.checkpoint import variant_name

    name = variant_name(config)
    sizes = '' if name != 'ELAN (custom)' else ' (' + ', '.join(f'{k}={config[k]}' for k in SHAPE_OPTIONS[1:]
                                                                if k in config) + ')'
    return f'{name} x{config["upscale"]}{sizes}'


def configured_elan(options: Dict[str, Any]) -> Dict[str, Any]:
    """The ELAN constructor's arguments for ``network_*`` options: the given ones over its defaults."""
    from elan_arch.archs.elan_arch import ELAN

    defaults = {k: p.default for k, p in (_parameters(ELAN) or {}).items() if p.default is not p.empty}
    return {**defaults, **{k: v for k, v in options.items() if k != 'type'}}


def _normal(key: str, value: Any) -> Any:
    """``window_sizes`` as a list of ints (an int or a tuple in an option file), other values as they are."""
    if key == 'window_sizes' and value is not None:
        return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return value


def described_unseen(loaded: Any, state: Dict[str, Any], path: str) -> Optional[Tuple[Dict[str, Any], str]]:
    """``window_sizes`` and ``shift_windows`` (which the tensors cannot tell) as the file at ``path`` describes
    them, and where: its record, or the option file of its BasicSR run folder; None when neither says.

    Raises:
        ElanError: the record or option file contradicts the tensors.
    """
    from elan_arch.deploy.checkpoint import UNSEEN, network_config
    from elan_arch.deploy.checkpoint_formats import NETWORK_G_KEY, Checkpoint, checked_record
    from elan_arch.deploy.option_files import run_network_g

    record = loaded.get(NETWORK_G_KEY) if isinstance(loaded, dict) else None
    if record is not None:
        where = f'its {NETWORK_G_KEY} record'
    else:
        run = run_network_g(path)
        if run is None:
            return None
        where = f'network_g of {run[0]}'
    ck = Checkpoint(state, 'BasicSR', network_g=checked_record(record, path) if record is not None else None)
    config = network_config(ck, path, announce=lambda note: None)
    return {k: config[k] for k in UNSEEN}, where


def pretrained_mismatch(opt: Dict[str, Any], key: str, loaded: Any) -> Optional[str]:
    """Why the file loaded for ``path.<key>`` (``pretrain_network_g``, ...) cannot be loaded strictly into the
    ELAN its ``network_*`` block configures (another scale, variant or ablation), or None (it fits, the block
    is not an ELAN, or ``strict_load_*`` is false: basicsr then loads what fits, e.g. x2 weights to start an
    x4 training)."""
    from elan_arch.archs.elan_arch import ABLATION_DEFAULTS
    from elan_arch.deploy.checkpoint import infer_config

    suffix = key[len('pretrain_network_'):]
    options = opt.get(f'network_{suffix}')
    if not isinstance(options, dict) or options.get('type') != 'ELAN':
        return None
    if not opt['path'].get(f'strict_load_{suffix}', True):
        return None
    param_key = opt['path'].get(f'param_key_{suffix}', 'params')
    if param_key is not None and isinstance(loaded, dict) and param_key not in loaded and 'params' not in loaded \
            and any(isinstance(v, dict) for v in loaded.values()):
        entries = ', '.join(str(k) for k, v in loaded.items() if isinstance(v, dict))
        return (f'has no {param_key!r} entry (it has {entries}): set path:param_key_{suffix} to the one to load '
                '(basicsr would stop with a KeyError)')
    state = _state_dict(loaded, param_key)
    try:
        found = infer_config(state, 'the file')
    except ElanError as err:
        return f'does not hold an ELAN network ({err})'
    except Exception as err:  # not a state_dict at all
        return f'does not hold an ELAN network ({type(err).__name__}: {err})'
    found = {**{k: v for k, v in ABLATION_DEFAULTS.items() if k in SHAPE_OPTIONS}, **found}
    wanted = configured_elan(options)
    found.setdefault('window_sizes', wanted.get('window_sizes'))  # not in the tensors; named as configured
    differ: List[str] = [f'{k} {found.get(k)!r} in the file, {wanted.get(k)!r} configured' for k in SHAPE_OPTIONS
                         if k in found and k in wanted and found[k] != wanted[k]]
    if not differ:
        try:
            described = described_unseen(loaded, state, opt['path'][key])
        except ElanError as err:
            return f'does not hold the network it describes ({err})'
        if described is not None:
            unseen, where = described
            found.update(unseen)
            differ = [f'{k} {v!r} in {where}, {wanted.get(k)!r} configured' for k, v in unseen.items()
                      if _normal(k, v) != _normal(k, wanted.get(k))]
    if not differ:
        return None
    return (f'holds {_described(found)}, but network_{suffix} configures {_described(wanted)}: {"; ".join(differ)}. '
            f'Use weights of the configured network, change network_{suffix} to match the file, or set '
            f'path:strict_load_{suffix}: false to load only the tensors that fit (e.g. x2 weights to start an x4 '
            'training)')
