"""The comparison page ``make demo`` ends with: bicubic vs the trained ELAN-light vs the originals of its
held-out photos (:func:`demo_page`)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Dict, Mapping

from elan_arch.compare.specs import ModelSpec


def demo_page(option_file: Path, test_opt: Mapping[str, Any], network_changes: Mapping[str, str], weights: Path,
              out: Path, label: str = 'ELAN-light') -> Path:
    """Compare bicubic and ``weights`` (the network of ``test_opt``'s ``network_g`` with the demo's
    ``--force_yml`` changes ``network_changes`` applied, parameters ``param_key_g``) on the test sets of
    ``option_file`` (the demo's test option file, read as ``test_opt``); write the page, figures and CSV to
    ``out`` (replaced); return ``out/index.html``."""
    from basicsr.utils.options import _postprocess_yml_value

    from elan_arch.compare.runner import CompareOptions, compare

    network: Dict[str, Any] = dict(test_opt['network_g'])
    network.update({k: _postprocess_yml_value(v) for k, v in network_changes.items()})
    model = ModelSpec(label, 'net', network=network, weights=Path(weights),
                      param_key=test_opt.get('path', {}).get('param_key_g', 'params'), argument=str(weights))
    scale = int(test_opt['scale'])
    command = ['elan', 'compare', '-i', str(option_file), '--scale', str(scale), '-m', 'bicubic',
               '-m', f'{label}={weights}', '-o', str(out)]
    options = CompareOptions([Path(option_file)], scale, [ModelSpec('bicubic', 'bicubic'), model], out, force=True,
                             quiet=True, command=shlex.join(command))
    return compare(options).output / 'index.html'
