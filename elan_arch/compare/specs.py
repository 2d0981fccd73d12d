"""What ``elan compare -m`` and ``--net`` name: parsed at the command line, loaded later
(:mod:`elan_arch.compare.models`).

``-m [NAME=]MODEL``, where MODEL is one of

- ``bicubic``: MATLAB bicubic upscaling of the LR image (the baseline; always computed, as the viewer shows it);
- an ELAN checkpoint (``.pth``/``.pt``/``.safetensors``, any format ``elan upscale --weights`` reads);
- an exported model (``.onnx``; OpenVINO ``.xml``; NCNN ``.param``), run by its runtime;
- a BasicSR option file (``.yml``): its ``network_g`` (any registered arch) with ``path:pretrain_network_g``
  (``param_key_g``, ``strict_load_g``), random initialisation when that is ``~``.

``--net 'type=ARCH,KEY=VALUE,...'``: a ``network_g`` on the command line (values read as YAML, so
``window_sizes=[4,8,16]`` works; commas inside brackets stay in the value), plus the keys ``name=`` (on the page),
``weights=PATH`` (its pretrained weights), ``param_key=`` (default ``params``, then ``params_ema``) and
``strict=false``. Without ``weights`` the network is randomly initialised (seeded), e.g. a baseline.

A model's name on the page is NAME, else the option file's ``name``, else the checkpoint's file name
(``experiments/<run>/models/net_g_<iter>.pth`` is ``<run>@<iter>``), else ``--net``'s ``type``.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

#: Suffixes that name an exported model, by the runtime that runs it.
EXPORTED = {'.onnx': 'onnx', '.xml': 'openvino', '.param': 'ncnn'}
#: The keys of ``--net`` that are not ``network_g`` options.
NET_KEYS = ('name', 'weights', 'param_key', 'strict')


@dataclass
class ModelSpec:
    """One model to compare.

    ``kind``: ``bicubic``, ``checkpoint`` (ELAN weights), ``onnx``/``openvino``/``ncnn`` (exported),
    ``options`` (an option file, read when loading) or ``net`` (``--net``: ``network`` given).
    """

    name: Optional[str]
    kind: str
    path: Optional[Path] = None
    network: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[Path] = None
    param_key: Optional[str] = None
    strict: bool = True
    argument: str = ''

    def label(self) -> str:
        """The page name it gets when none is given."""
        if self.name:
            return self.name
        if self.kind == 'bicubic':
            return 'bicubic'
        if self.kind == 'net':
            return str(self.network.get('type', 'net'))
        path = self.path
        if self.kind == 'options':
            return _option_file_name(path) or path.stem
        match = re.fullmatch(r'net_g_(\d+|latest)', path.stem)
        if match and path.parent.name == 'models' and path.parent.parent.name:
            return f'{path.parent.parent.name}@{match.group(1)}'
        return path.stem


def _option_file_name(path: Path) -> Optional[str]:
    """An option file's ``name``; None if it is unreadable or has none (loading reports what is wrong)."""
    import yaml

    try:
        name = (yaml.safe_load(path.read_text(encoding='utf-8')) or {}).get('name')
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(name) if name else None


def parse_model(text: str) -> ModelSpec:
    """``-m [NAME=]MODEL`` (the module docstring); argparse.ArgumentTypeError for an empty name or model."""
    name: Optional[str] = None
    target = text
    head, sep, tail = text.partition('=')
    if sep and '/' not in head and '\\' not in head and not Path(text).exists():
        name, target = head.strip(), tail.strip()
        if not name or not target:
            raise argparse.ArgumentTypeError(f'{text!r}: expected NAME=MODEL (e.g. ELAN=net_g_latest.pth) or MODEL')
    if target.lower() == 'bicubic':
        return ModelSpec(name, 'bicubic', argument=text)
    path = Path(target)
    suffix = path.suffix.lower()
    if suffix in ('.yml', '.yaml'):
        return ModelSpec(name, 'options', path, argument=text)
    return ModelSpec(name, EXPORTED.get(suffix, 'checkpoint'), path, argument=text)


def split_items(text: str) -> List[str]:
    """``a=1,b=[4,8],c=x`` -> ``['a=1', 'b=[4,8]', 'c=x']``: commas inside brackets or braces do not split."""
    items, depth, current = [], 0, ''
    for char in text:
        depth += char in '[{('
        depth -= char in ']})'
        if char == ',' and depth == 0:
            items.append(current)
            current = ''
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def parse_net(text: str) -> ModelSpec:
    """``--net 'type=ARCH,KEY=VALUE,...'`` (the module docstring)."""
    import yaml

    network: Dict[str, Any] = {}
    extra: Dict[str, str] = {}
    for item in split_items(text):
        key, sep, value = item.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f'{text!r}: {item!r} is not KEY=VALUE (e.g. type=SwinIR,upscale=4)')
        if key in NET_KEYS:
            extra[key] = value
            continue
        try:
            network[key] = yaml.safe_load(value) if value else None
        except yaml.YAMLError as err:
            raise argparse.ArgumentTypeError(f'{text!r}: cannot read the value of {key} ({err})') from err
    if not isinstance(network.get('type'), str):
        raise argparse.ArgumentTypeError(f'{text!r}: name the arch with type=ARCH (e.g. type=ELAN or type=SwinIR)')
    strict = extra.get('strict', 'true').lower()
    if strict not in ('true', 'false'):
        raise argparse.ArgumentTypeError(f'{text!r}: strict={extra["strict"]}: true or false')
    weights = extra.get('weights')
    return ModelSpec(extra.get('name'), 'net', network=network, weights=Path(weights) if weights else None,
                     param_key=extra.get('param_key'), strict=strict == 'true', argument=text)


def page_names(specs: List[ModelSpec]) -> List[str]:
    """Unique page names of ``specs`` in order (``name (2)`` for repeats)."""
    names: List[str] = []
    for spec in specs:
        base = spec.label()
        name, k = base, 1
        while name in names:
            k += 1
            name = f'{base} ({k})'
        names.append(name)
    return names
