"""``network_g`` of a BasicSR option file: one the user names (``--opt FILE``), or the one BasicSR copied
into the run folder of a checkpoint.

``basicsr train -opt FILE`` copies FILE to ``experiments/<name>/`` (basicsr 1.4.2's ``copy_opt_file``: the
file's own name, with three comment lines on top, the second of which is the command line) and saves the
networks in ``experiments/<name>/models/``. The copy is the option file as written: ``--force_yml``
entries (``network_g:window_sizes=[8]``, as ``python -m elan_arch.demo --variant window8`` passes) are
only in the recorded command line, so :func:`run_network_g` applies the ``network_g`` ones to it the way
basicsr's ``parse_options`` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from elan_arch.utils.errors import ElanError

OPTION_SUFFIXES = ('.yml', '.yaml')


def _load(path: Path) -> Tuple[Any, str]:
    import yaml

    try:
        text = path.read_text(encoding='utf-8')
        return yaml.safe_load(text), text
    except (OSError, UnicodeDecodeError) as err:
        raise ElanError(f'{path}: cannot be read ({err})') from err
    except yaml.YAMLError as err:
        raise ElanError(f'{path}: not valid YAML ({str(err).splitlines()[0]})') from err


def _network_g(opt: Any, path: Path) -> Dict[str, Any]:
    block = opt.get('network_g') if isinstance(opt, dict) else None
    if not isinstance(block, dict):
        raise ElanError(f'{path}: no network_g in this file; name a BasicSR option file with network_g: type: ELAN')
    if block.get('type') != 'ELAN':
        raise ElanError(f'{path}: network_g is {block.get("type")!r}, not ELAN')
    return dict(block)


def network_g_of(path: str) -> Dict[str, Any]:
    """``network_g`` of the option file ``path`` (``--opt FILE``; a copy in a run folder with the
    ``--force_yml`` entries of its recorded command line); ElanError naming it if it is missing, not YAML,
    or not an ELAN's."""
    file = Path(path)
    if not file.is_file():
        raise ElanError(f'--opt {path}: no such option file')
    opt, text = _load(file)
    return _forced(_network_g(opt, file), forced_entries(text))


def forced_entries(text: str) -> List[str]:
    """The ``--force_yml`` entries (``KEY=VALUE``) of the command line that basicsr's ``copy_opt_file``
    recorded in ``text``'s head (``# CMD:`` then ``# <argv joined by spaces>``). A value that held spaces
    (``'[4, 8]'``) was split by the join; its pieces are joined back."""
    lines = text.splitlines()[:4]
    command = next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line.strip() == '# CMD:'), '')
    words = command.lstrip('#').split()
    if '--force_yml' not in words:
        return []
    entries: List[str] = []
    for word in words[words.index('--force_yml') + 1:]:
        if word.startswith('--'):
            break
        if '=' in word or not entries:
            entries.append(word)
        else:
            entries[-1] += ' ' + word
    return entries


def _forced(network_g: Dict[str, Any], entries: List[str]) -> Dict[str, Any]:
    """``network_g`` with the ``network_g:KEY=VALUE`` entries applied, values parsed as basicsr parses them."""
    from basicsr.utils.options import _postprocess_yml_value

    for entry in entries:
        keys, _, value = entry.partition('=')
        parts = keys.strip().split(':')
        if len(parts) == 2 and parts[0] == 'network_g':
            network_g[parts[1]] = _postprocess_yml_value(value.strip())
    return network_g


def run_network_g(checkpoint: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(option file, network_g)`` of the BasicSR run that ``checkpoint`` belongs to
    (``experiments/<name>/models/<file>``, option file ``experiments/<name>/*.yml``), or None when the
    checkpoint is not in a run folder or the folder holds no option file with an ELAN ``network_g``.

    Raises:
        ElanError: the folder holds several such option files that disagree on ``network_g``.
    """
    models = Path(checkpoint).parent
    if models.absolute().name != 'models':
        return None
    found: Dict[str, Dict[str, Any]] = {}
    for file in sorted(p for p in models.parent.iterdir() if p.suffix in OPTION_SUFFIXES and p.is_file()):
        try:
            opt, text = _load(file)
            found[str(file)] = _forced(_network_g(opt, file), forced_entries(text))
        except ElanError:
            continue  # not an ELAN's option file: not this run's
    if not found:
        return None
    if len({repr(sorted(v.items())) for v in found.values()}) > 1:
        raise ElanError(f'{checkpoint}: the run folder holds option files with different network_g '
                        f'({", ".join(found)}); pass --opt FILE (Python: opt=FILE) to say which one trained it')
    file = next(iter(found))
    return file, found[file]
