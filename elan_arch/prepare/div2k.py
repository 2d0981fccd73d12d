"""``elan prepare div2k``: DIV2K as downloaded -> sub-image crops -> the LMDB pairs BasicSR trains on.

Input (``--input``, DIV2K's own layout)::

    DIV2K_train_HR/0001.png ...
    DIV2K_train_LR_bicubic/X{s}/0001x{s}.png ...   (optional; made from HR when the folder is missing)

Output (``--output``, default the input folder)::

    DIV2K_train_HR_sub.lmdb/                  {data.mdb, lock.mdb, meta_info.txt}, keys 0001_s001 ...
    DIV2K_train_LR_bicubic_X{s}_sub.lmdb/     the same keys, LR crops of crop_size/s
    DIV2K_train_HR_sub/, DIV2K_train_LR_bicubic/X{s}_sub/   the crops as PNG (only with keep_subimages)

Stages, each with a progress bar: crop (parallel over images), one LMDB per dataset, and a final
:func:`check_lmdb_pair` of every pair. Everything is built under temporary names and renamed into
place only when all of it succeeded.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike, atomic_path, check_output_free
from elan_arch.data.lmdb_check import check_lmdb_pair
from elan_arch.utils.images import PNG_COMPRESSION, check_key, list_images
from elan_arch.prepare.jobs import PrepareSummary, parallel_map, tree_bytes
from elan_arch.prepare.lmdb_writer import write_lmdb
from elan_arch.prepare.subimages import CropJob, extract_crops

HR_FOLDER = 'DIV2K_train_HR'
LR_FOLDER = 'DIV2K_train_LR_bicubic'


def check_scales(scales: Iterable[int], crop_size: Optional[int] = None, step: Optional[int] = None) -> Tuple[int, ...]:
    """Sorted unique scales (each >= 2); with a crop size and step, both must be multiples of every scale."""
    scales = tuple(sorted(set(int(s) for s in scales)))
    if not scales or min(scales) < 2:
        raise ElanError(f'--scales must list upscale factors of at least 2 (got {list(scales)})')
    if crop_size is not None:
        modulo = int(np.lcm.reduce(scales))
        for name, value in (('--crop-size', crop_size), ('--step', step)):
            if value <= 0 or value % modulo:
                raise ElanError(f'{name} {value} must be a positive multiple of {modulo} (every scale of '
                                f'{list(scales)} divides it), so that LR crops line up with HR crops')
    return scales


def div2k_lmdb_paths(output: Path, scales: Iterable[int]) -> Dict[int, Path]:
    """``{1: HR LMDB, s: LR LMDB of scale s}`` under ``output``."""
    paths = {1: output / f'{HR_FOLDER}_sub.lmdb'}
    paths.update({s: output / f'{LR_FOLDER}_X{s}_sub.lmdb' for s in scales})
    return paths


def div2k_subimage_dirs(output: Path, scales: Iterable[int]) -> Dict[int, Path]:
    """``{1: HR crops folder, s: LR crops folder}`` under ``output``, BasicSR's names."""
    paths = {1: output / f'{HR_FOLDER}_sub'}
    paths.update({s: output / LR_FOLDER / f'X{s}_sub' for s in scales})
    return paths


def find_lr_images(root: Path, hr_files: List[Path], scales: Tuple[int, ...]) -> Dict[Path, Dict[int, Optional[Path]]]:
    """For each HR file, its LR file per scale (``0001x2.png`` or ``0001.png``), or None where the LR folder
    is missing."""
    found: Dict[Path, Dict[int, Optional[Path]]] = {hr: {} for hr in hr_files}
    for scale in scales:
        folder = root / LR_FOLDER / f'X{scale}'
        by_stem = {p.stem: p for p in list_images(folder, f'DIV2K LR x{scale}')} if folder.is_dir() else None
        for hr in hr_files:
            lr = None if by_stem is None else by_stem.get(f'{hr.stem}x{scale}', by_stem.get(hr.stem))
            if by_stem is not None and lr is None:
                raise ElanError(f'{folder} has no LR image for {hr} (expected {hr.stem}x{scale}.png); add it, '
                                f'or move the folder away so that LR images are made from HR')
            found[hr][scale] = lr
    return found


def prepare_div2k(input: PathLike, output: Optional[PathLike] = None, scales: Iterable[int] = (2, 3, 4),
                  crop_size: int = 480, step: int = 240, workers: int = 1, force: bool = False,
                  keep_subimages: bool = False, compress_level: int = PNG_COMPRESSION,
                  progress: bool = True) -> PrepareSummary:
    """Build the DIV2K sub-image LMDBs (see the module docstring); return what was done.

    Args:
        input: Folder holding ``DIV2K_train_HR`` (and optionally ``DIV2K_train_LR_bicubic/X{s}``).
        output: Where the LMDBs go (default: ``input``).
        scales: Upscale factors; one LR LMDB each.
        crop_size, step: HR crop size and stride (BasicSR: 480 and 240); multiples of every scale.
        workers: Processes cropping images in parallel.
        force: Replace existing outputs (otherwise they raise :class:`ElanError`).
        keep_subimages: Also keep the crops as PNG folders (BasicSR's ``*_sub`` folders).
        compress_level: PNG zlib level of the stored crops.
        progress: Show progress bars.
    """
    start = time.perf_counter()
    scales = check_scales(scales, crop_size, step)
    root = Path(input)
    out = Path(output) if output is not None else root
    hr_files = list_images(root / HR_FOLDER, 'DIV2K HR')
    for hr in hr_files:
        check_key(hr.stem, hr)
    lr_files = find_lr_images(root, hr_files, scales)
    lmdbs = div2k_lmdb_paths(out, scales)
    subdirs = div2k_subimage_dirs(out, scales)
    for path in list(lmdbs.values()) + (list(subdirs.values()) if keep_subimages else []):
        check_output_free(path, force)

    summary = PrepareSummary(images=len(hr_files))
    with contextlib.ExitStack() as stack:
        tmp_lmdbs = {s: stack.enter_context(atomic_path(p, overwrite=force)) for s, p in lmdbs.items()}
        if keep_subimages:
            crop_dirs = {s: stack.enter_context(atomic_path(p, overwrite=force, is_dir=True))
                         for s, p in subdirs.items()}
        else:
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix='.elan-crops-', dir=out)))
            crop_dirs = {s: staging / p.name for s, p in subdirs.items()}
            for folder in crop_dirs.values():
                folder.mkdir()
        # largest files first, so that parallel workers finish together
        jobs = [CropJob(hr, lr_files[hr], crop_dirs, crop_size, step, compress_level)
                for hr in sorted(hr_files, key=lambda p: p.stat().st_size, reverse=True)]
        for result in parallel_map(extract_crops, jobs, workers, f'crop x{"/".join(map(str, scales))}', progress):
            summary.crops += result.crops
            summary.skipped += [result.skipped] if result.skipped else []
        if summary.crops == 0:
            raise ElanError(f'no image in {root / HR_FOLDER} is at least --crop-size {crop_size} pixels on both '
                            f'sides; lower --crop-size/--step or add larger images')
        for scale, path in tmp_lmdbs.items():
            write_lmdb(crop_dirs[scale], path, f'lmdb {lmdbs[scale].name}', compress_level, progress)
        for scale in scales:
            check_lmdb_pair(tmp_lmdbs[1], tmp_lmdbs[scale], scale, names=(lmdbs[1].name, lmdbs[scale].name),
                            require_suffix=False, strict=True)
        kept = list(crop_dirs.values()) if keep_subimages else []
        summary.bytes = sum(tree_bytes(p) for p in list(tmp_lmdbs.values()) + kept)
    summary.outputs = [str(p) for p in lmdbs.values()] + ([str(p) for p in subdirs.values()] if keep_subimages else [])
    summary.seconds = time.perf_counter() - start
    return summary

