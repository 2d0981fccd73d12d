"""Up-front check of a GT/LQ LMDB pair before BasicSR trains on it.

Cheap: it reads both ``meta_info.txt`` files, scans the LMDB keys (no values) and decodes a handful
of sampled pairs. It follows what BasicSR's LMDB reader does with the data (it takes the keys from
``meta_info.txt``, the text of each line up to its first dot, and never reads the sizes written there):

* refused (:class:`~elan_arch.utils.errors.ElanError`), because training would crash or be wrong:
  a missing folder, ``data.mdb`` or ``meta_info.txt``, an empty or unreadable ``meta_info.txt``, keys
  listed there but not stored, GT and LQ key sets that differ, images that do not decode, and GT
  sizes that are not ``scale`` times their LQ (decoded sizes decide; a size in ``meta_info.txt`` that
  breaks the rule is confirmed by decoding that pair);
* reported (:attr:`LmdbPairSummary.warnings`, one line each naming the LMDB and a key), because
  BasicSR ignores it: sizes in ``meta_info.txt`` that differ from the stored images, stored keys that
  ``meta_info.txt`` does not list, keys listed twice (BasicSR then trains on that pair twice as often).

LMDBs made by other tools (BasicSR's ``scripts/data_preparation/create_lmdb.py``, or anything that
writes the same layout) are checked by the same rules; messages say what to do for both.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import cv2
import lmdb
import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike, shown_path

Shape = Tuple[int, int, int]
MAKE_HINT = ('create it with `elan prepare div2k --input datasets/DIV2K` (DIV2K) or `elan prepare demo` '
             '(the bundled demo data)')
REBUILD_HINT = ('if `elan prepare` made it, rebuild it with --force; if another tool did, fix its meta_info.txt '
                'or rebuild it with that tool (e.g. BasicSR\'s scripts/data_preparation/create_lmdb.py)')
_SIZE = re.compile(r'\((\d+),\s*(\d+),\s*(\d+)\)')


@dataclass(frozen=True)
class LmdbPairSummary:
    """Result of :func:`check_lmdb_pair`: number of pairs, the scale, the decoded GT/LQ shapes of one pair,
    and one line per finding that BasicSR ignores (empty for consistent data)."""

    pairs: int
    scale: int
    gt_shape: Shape
    lq_shape: Shape
    warnings: Tuple[str, ...] = field(default=())


@dataclass
class _Lmdb:
    """One opened LMDB of the pair: its keys as ``meta_info.txt`` lists them (in order, with the size
    each line records, if any) and what its check found that BasicSR ignores."""

    path: Path
    name: str
    env: lmdb.Environment
    sizes: Dict[str, Optional[Shape]]
    warnings: List[str]

    def decode(self, key: str) -> Shape:
        with self.env.begin() as txn:
            data = txn.get(key.encode('utf-8'))
        img = None if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ElanError(f'{self.name} {self.path}: image {key} does not decode (damaged or not an image); '
                            f'{REBUILD_HINT}')
        return img.shape[:2] + ((img.shape + (1, ))[2], )


def _examples(keys: Iterable[str], most: int = 3) -> str:
    keys = sorted(keys)
    more = f' and {len(keys) - most} more' if len(keys) > most else ''
    return ', '.join(keys[:most]) + more


def read_meta_info(lmdb_dir: Path, name: str, warnings: Optional[List[str]] = None) -> Dict[str, Optional[Shape]]:
    """``key -> (h, w, c)`` (None where the line records no size) from ``lmdb_dir/meta_info.txt``.

    The key is the line up to its first dot, as BasicSR reads it. Keys listed twice are reported in
    ``warnings`` (when given); lines BasicSR cannot use (blank, or without a dot) are refused.
    """
    meta_file = lmdb_dir / 'meta_info.txt'
    if not meta_file.is_file():
        raise ElanError(f'{name} {lmdb_dir} has no meta_info.txt, so BasicSR cannot list it; {MAKE_HINT}')
    try:
        lines = meta_file.read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ElanError(f'{meta_file} cannot be read as text ({err}); {REBUILD_HINT}') from err
    sizes: Dict[str, Optional[Shape]] = {}
    repeated = []
    for number, line in enumerate(lines, 1):
        if '.' not in line or not line.split('.')[0].strip() or line.split('.')[0] != line.split('.')[0].strip():
            raise ElanError(f'{meta_file} line {number} {line!r} is not "<key>.<ext> ..." (BasicSR takes the key '
                            f'up to the first dot, so it would look up a key that is not stored); {REBUILD_HINT}')
        key = line.split('.')[0]
        if key in sizes:
            repeated.append(key)
        size = _SIZE.search(line)
        sizes[key] = tuple(int(size.group(i)) for i in (1, 2, 3)) if size else None
    if not sizes:
        raise ElanError(f'{meta_file} is empty; {MAKE_HINT}')
    if repeated and warnings is not None:
        warnings.append(f'{name} {lmdb_dir}: meta_info.txt lists {_examples(set(repeated))} more than once; BasicSR '
                        'trains on each listed line, so those pairs are seen more often')
    return sizes


def _open(lmdb_dir: Path, name: str) -> _Lmdb:
    """Open one LMDB and compare its stored keys with ``meta_info.txt``'s."""
    if not lmdb_dir.is_dir() or not (lmdb_dir / 'data.mdb').is_file():
        what = 'does not exist' if not lmdb_dir.exists() else 'is not an LMDB folder (no data.mdb)'
        raise ElanError(f'{name} {shown_path(lmdb_dir)} {what}; {MAKE_HINT}')
    warnings: List[str] = []
    sizes = read_meta_info(lmdb_dir, name, warnings)
    try:
        env = lmdb.open(os.fspath(lmdb_dir), readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise ElanError(f'{name} {lmdb_dir} cannot be opened as an LMDB ({err}); {MAKE_HINT}') from err
    with env.begin() as txn:
        keys = {k.decode('utf-8', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
    missing, extra = set(sizes) - keys, keys - set(sizes)
    if missing:
        env.close()
        raise ElanError(f'{name} {lmdb_dir}: meta_info.txt lists keys the LMDB does not store ({_examples(missing)}), '
                        f'which BasicSR would fail to read; {REBUILD_HINT}')
    if extra:
        warnings.append(f'{name} {lmdb_dir}: the LMDB stores keys meta_info.txt does not list ({_examples(extra)}); '
                        'BasicSR trains on the listed ones only')
    return _Lmdb(lmdb_dir, name, env, sizes, warnings)


def _sampled(keys: List[str], samples: int) -> List[str]:
    """``samples`` keys spread evenly over the sorted ``keys`` (first and last included)."""
    return [keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, samples).round().astype(int))]


def _stale_sizes(store: _Lmdb, decoded: Dict[str, Shape]) -> None:
    """Report (once per LMDB) the decoded images whose ``meta_info.txt`` size differs."""
    stale = {k: shape for k, shape in decoded.items() if store.sizes[k] is not None and store.sizes[k] != shape}
    if stale:
        key = min(stale)
        store.warnings.append(
            f'{store.name} {store.path}: meta_info.txt says {store.sizes[key]} for {key}, but the image is '
            f'{stale[key]} ({len(stale)} of {len(decoded)} checked images differ); BasicSR reads only the keys '
            'from meta_info.txt, so training uses the stored images; rewrite meta_info.txt to silence this')


def check_lmdb_pair(gt_lmdb: PathLike, lq_lmdb: PathLike, scale: int, names: Tuple[str, str] = ('GT LMDB', 'LQ LMDB'),
                    samples: int = 4, require_suffix: bool = True, strict: bool = False) -> LmdbPairSummary:
    """Check that a GT and an LQ LMDB form a valid BasicSR ``PairedImageDataset`` pair at ``scale``.

    Args:
        gt_lmdb, lq_lmdb: The two ``*.lmdb`` folders.
        scale: Upscale factor: every GT image must be exactly ``scale`` times its LQ image (height and width).
        names: How messages call the two (e.g. the option names ``dataroot_gt``/``dataroot_lq``).
        samples: How many pairs to decode (evenly spread over the sorted keys).
        require_suffix: Insist on the ``.lmdb`` suffix that BasicSR's lmdb backend requires.
        strict: Refuse what would only be reported, too (for LMDBs this package has just written).

    Raises :class:`ElanError` naming the LMDB and the fix (see the module docstring for what is refused
    and what only reported); returns a :class:`LmdbPairSummary`.
    """
    gt_dir, lq_dir = Path(gt_lmdb), Path(lq_lmdb)
    for path, name in ((gt_dir, names[0]), (lq_dir, names[1])):
        if require_suffix and path.suffix != '.lmdb':
            raise ElanError(f'{name} {path} must be a folder whose name ends with .lmdb (BasicSR requires it)')
    gt = _open(gt_dir, names[0])
    try:
        lq = _open(lq_dir, names[1])
    except ElanError:
        gt.env.close()
        raise
    try:
        if set(gt.sizes) != set(lq.sizes):
            raise ElanError(f'{names[0]} {gt_dir} and {names[1]} {lq_dir} hold different keys (only in GT: '
                            f'{_examples(set(gt.sizes) - set(lq.sizes)) or "none"}; '
                            f'only in LQ: {_examples(set(lq.sizes) - set(gt.sizes)) or "none"}), which BasicSR '
                            'refuses; they must list the same images (the same `elan prepare` run, or the same '
                            'key list in both meta_info.txt files)')
        keys = sorted(gt.sizes)
        # pairs whose recorded sizes break the scale are decoded too: the images decide, not meta_info.txt
        suspects = [k for k in keys if gt.sizes[k] and lq.sizes[k]
                    and gt.sizes[k][:2] != (lq.sizes[k][0] * scale, lq.sizes[k][1] * scale)]
        checked = list(dict.fromkeys(_sampled(keys, samples) + suspects[:samples]))
        decoded = {k: (gt.decode(k), lq.decode(k)) for k in checked}
        for key in checked:
            (gh, gw, gc), (lh, lw, lc) = decoded[key]
            if (gh, gw) != (lh * scale, lw * scale):
                raise ElanError(f'{key}: GT {gh}x{gw}x{gc} in {gt_dir} is not x{scale} of LQ {lh}x{lw}x{lc} in '
                                f'{lq_dir}; check the scale, or that the LQ LMDB is the one made for x{scale}')
        _stale_sizes(gt, {k: v[0] for k, v in decoded.items()})
        _stale_sizes(lq, {k: v[1] for k, v in decoded.items()})
        warnings = tuple(gt.warnings + lq.warnings)
    finally:
        gt.env.close()
        lq.env.close()
    if strict and warnings:
        raise ElanError('; '.join(warnings))
    first = keys[0]
    return LmdbPairSummary(pairs=len(keys), scale=scale, gt_shape=decoded[first][0], lq_shape=decoded[first][1],
                           warnings=warnings)
