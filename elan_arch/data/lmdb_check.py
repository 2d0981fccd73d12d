"""Up-front check of a GT/LQ LMDB pair before BasicSR trains on it.

Cheap: it reads both ``meta_info.txt`` files, scans the LMDB keys (no values) and decodes a
handful of sampled images. It catches what BasicSR would otherwise report late or not at all:
missing files, ``meta_info.txt`` out of step with the LMDB, GT and LQ key sets that differ, and
GT/LQ sizes that do not agree with the scale.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Tuple

import cv2
import lmdb
import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike

Shape = Tuple[int, int, int]
MAKE_HINT = ('create it with `elan prepare div2k --input datasets/DIV2K` (DIV2K) or `elan prepare demo` '
             '(the bundled demo data)')
_META_LINE = re.compile(r'^(\S+) \((\d+),(\d+),(\d+)\) (\d+)$')


@dataclass(frozen=True)
class LmdbPairSummary:
    """Result of :func:`check_lmdb_pair`: number of pairs, the scale, and the GT/LQ shapes of one pair."""

    pairs: int
    scale: int
    gt_shape: Shape
    lq_shape: Shape


def _examples(keys: Iterable[str], most: int = 3) -> str:
    keys = sorted(keys)
    more = f' and {len(keys) - most} more' if len(keys) > most else ''
    return ', '.join(keys[:most]) + more


def read_meta_info(lmdb_dir: Path, name: str) -> Dict[str, Shape]:
    """``key -> (h, w, c)`` from ``lmdb_dir/meta_info.txt``; the key is the name up to its first dot, as in BasicSR."""
    meta_file = lmdb_dir / 'meta_info.txt'
    if not meta_file.is_file():
        raise ElanError(f'{name} {lmdb_dir} has no meta_info.txt, so BasicSR cannot list it; {MAKE_HINT}')
    shapes: Dict[str, Shape] = {}
    for number, line in enumerate(meta_file.read_text().splitlines(), 1):
        match = _META_LINE.match(line.strip())
        if not match:
            raise ElanError(f'{meta_file} line {number} is not "<key>.png (h,w,c) <level>": {line!r}; '
                            f'rebuild the LMDB with `elan prepare`')
        key = match.group(1).split('.')[0]
        if key in shapes:
            raise ElanError(f'{meta_file} lists key {key} twice (line {number}); rebuild the LMDB')
        shapes[key] = tuple(int(match.group(i)) for i in (2, 3, 4))
    if not shapes:
        raise ElanError(f'{meta_file} is empty; {MAKE_HINT}')
    return shapes


def _check_one(lmdb_dir: Path, name: str, samples: int) -> Dict[str, Shape]:
    """Meta-info of one LMDB, checked against its keys and a sample of decoded images."""
    if not lmdb_dir.is_dir() or not (lmdb_dir / 'data.mdb').is_file():
        what = 'does not exist' if not lmdb_dir.exists() else 'is not an LMDB folder (no data.mdb)'
        raise ElanError(f'{name} {lmdb_dir} {what}; {MAKE_HINT}')
    shapes = read_meta_info(lmdb_dir, name)
    try:
        env = lmdb.open(os.fspath(lmdb_dir), readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise ElanError(f'{name} {lmdb_dir} cannot be opened as an LMDB ({err}); {MAKE_HINT}') from err
    try:
        with env.begin() as txn:
            keys = {k.decode('ascii', 'replace') for k in txn.cursor().iternext(keys=True, values=False)}
            missing, extra = set(shapes) - keys, keys - set(shapes)
            if missing or extra:
                raise ElanError(f'{name} {lmdb_dir}: meta_info.txt and the LMDB disagree (listed but not '
                                f'stored: {_examples(missing) or "none"}; stored but not listed: '
                                f'{_examples(extra) or "none"}); rebuild it with --force')
            ordered = sorted(shapes)
            for index in np.unique(np.linspace(0, len(ordered) - 1, samples).round().astype(int)):
                key = ordered[index]
                img = cv2.imdecode(np.frombuffer(txn.get(key.encode('ascii')), np.uint8), cv2.IMREAD_UNCHANGED)
                shape = None if img is None else img.shape[:2] + ((img.shape + (1, ))[2], )
                if shape != shapes[key]:
                    raise ElanError(f'{name} {lmdb_dir}: image {key} decodes to {shape} but meta_info.txt '
                                    f'says {shapes[key]}; rebuild it with --force')
    finally:
        env.close()
    return shapes


def check_lmdb_pair(gt_lmdb: PathLike, lq_lmdb: PathLike, scale: int, names: Tuple[str, str] = ('GT LMDB', 'LQ LMDB'),
                    samples: int = 4, require_suffix: bool = True) -> LmdbPairSummary:
    """Check that a GT and an LQ LMDB form a valid BasicSR ``PairedImageDataset`` pair at ``scale``.

    Args:
        gt_lmdb, lq_lmdb: The two ``*.lmdb`` folders.
        scale: Upscale factor: every GT image must be exactly ``scale`` times its LQ image.
        names: How error messages call the two (e.g. the option names ``dataroot_gt``/``dataroot_lq``).
        samples: How many images per LMDB to decode and compare with ``meta_info.txt``.
        require_suffix: Insist on the ``.lmdb`` suffix that BasicSR's lmdb backend requires.

    Raises :class:`ElanError` naming the LMDB and the fix; returns a :class:`LmdbPairSummary`.
    """
    gt_dir, lq_dir = Path(gt_lmdb), Path(lq_lmdb)
    for path, name in ((gt_dir, names[0]), (lq_dir, names[1])):
        if require_suffix and path.suffix != '.lmdb':
            raise ElanError(f'{name} {path} must be a folder whose name ends with .lmdb (BasicSR requires it)')
    gt, lq = _check_one(gt_dir, names[0], samples), _check_one(lq_dir, names[1], samples)
    if set(gt) != set(lq):
        raise ElanError(f'{names[0]} {gt_dir} and {names[1]} {lq_dir} hold different keys (only in GT: '
                        f'{_examples(set(gt) - set(lq)) or "none"}; '
                        f'only in LQ: {_examples(set(lq) - set(gt)) or "none"}); '
                        f'they must come from the same `elan prepare` run')
    for key in sorted(gt):
        (gh, gw, gc), (lh, lw, lc) = gt[key], lq[key]
        if (gh, gw, gc) != (lh * scale, lw * scale, lc):
            raise ElanError(f'{key}: GT {gh}x{gw}x{gc} in {gt_dir} is not x{scale} of LQ {lh}x{lw}x{lc} in {lq_dir}; '
                            f'check the scale, or that the LQ LMDB is the one made for x{scale}')
    first = min(gt)
    return LmdbPairSummary(pairs=len(gt), scale=scale, gt_shape=gt[first], lq_shape=lq[first])
