"""``elan prepare benchmark``: HR test images -> BasicSR's test-set layout.

Input: a set folder (Set5, Set14, B100, Urban100, Manga109, ...) holding its HR images, either
directly or in ``HR/`` (the common ``HR/`` + ``LR_bicubic/X{s}/`` layout; those LR images are not
used, since they were made from un-cropped HR). Output (default: the set folder itself)::

    GTmod12/<name>.png      HR cropped to a multiple of 12 (of lcm(12, scales) for other scales)
    LRbicx{s}/<name>.png    MATLAB bicubic 1/s of GTmod12

which is what BasicSR's test option files read (``dataroot_gt: datasets/Set5/GTmod12``,
``dataroot_lq: datasets/Set5/LRbicx4``). Each folder is built under a temporary name and renamed
once the whole set succeeded.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike, atomic_path, check_output_free
from elan_arch.utils.images import PNG_COMPRESSION, bicubic_downscale, list_images, mod_crop, read_image, write_png
from elan_arch.prepare.jobs import PrepareSummary, parallel_map, tree_bytes
from elan_arch.prepare.div2k import check_scales
from elan_arch.prepare.subimages import CropResult


@dataclass(frozen=True)
class BenchmarkJob:
    """One test image: where it is, the mod-crop, and the output folder per scale (1 = GT)."""

    path: Path
    out_dirs: Dict[int, Path]
    modulo: int
    compress_level: int


def gt_modulo(scales: Iterable[int]) -> int:
    """The GT mod-crop: lcm(12, scales), i.e. BasicSR's 12 for x2/x3/x4."""
    return int(np.lcm.reduce([12] + list(scales)))


def benchmark_dirs(set_dir: Path, scales: Iterable[int]) -> Dict[int, Path]:
    """``{1: GTmod<m>, s: LRbicx<s>}`` under ``set_dir``, m = :func:`gt_modulo`."""
    dirs = {1: set_dir / f'GTmod{gt_modulo(scales)}'}
    dirs.update({s: set_dir / f'LRbicx{s}' for s in scales})
    return dirs


def _locate(set_dir: Path, output: Optional[Path]) -> Tuple[Path, Path]:
    """(HR image folder, output set folder) for an input set folder (or its ``HR/`` folder)."""
    if (set_dir / 'HR').is_dir():
        return set_dir / 'HR', output or set_dir
    return set_dir, output or (set_dir.parent if set_dir.name == 'HR' else set_dir)


def make_test_pair(job: BenchmarkJob) -> CropResult:
    """Write the GT (mod-cropped) and the LR images of one test image."""
    img = mod_crop(read_image(job.path), job.modulo)
    if img.size == 0:
        return CropResult(0, skipped=f'{job.path}: smaller than {job.modulo} pixels on a side')
    name = f'{job.path.stem}.png'
    write_png(job.out_dirs[1] / name, img, job.compress_level)
    for scale in sorted(s for s in job.out_dirs if s != 1):
        write_png(job.out_dirs[scale] / name, bicubic_downscale(img, scale), job.compress_level)
    return CropResult(1)


def prepare_benchmark(inputs: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike] = None,
                      scales: Iterable[int] = (2, 3, 4), workers: int = 1, force: bool = False,
                      compress_level: int = PNG_COMPRESSION, progress: bool = True) -> PrepareSummary:
    """Write ``GTmod12/`` and ``LRbicx{s}/`` for each set folder in ``inputs``; return what was done.

    Args:
        inputs: One or more set folders (images directly inside, or in ``HR/``).
        output: Output set folder; only with a single input (default: each set folder itself).
        scales: Upscale factors; one ``LRbicx{s}`` folder each.
        workers: Processes working in parallel.
        force: Replace existing ``GTmod12``/``LRbicx{s}`` folders.
        compress_level: PNG zlib level.
        progress: Show a progress bar per set.
    """
    start = time.perf_counter()
    scales = check_scales(scales)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if output is not None and len(inputs) != 1:
        raise ElanError(f'--output needs exactly one --input (got {len(inputs)}); '
                        'leave it out to write into each set folder')
    sets: List[Tuple[Path, List[Path], Dict[int, Path]]] = []
    for set_dir in map(Path, inputs):
        hr_dir, out_dir = _locate(set_dir, Path(output) if output is not None else None)
        images = list_images(hr_dir, 'benchmark HR')
        dirs = benchmark_dirs(out_dir, scales)
        for path in dirs.values():
            check_output_free(path, force)
        sets.append((out_dir, images, dirs))

    summary = PrepareSummary()
    for out_dir, images, dirs in sets:
        with contextlib.ExitStack() as stack:
            tmp = {s: stack.enter_context(atomic_path(p, overwrite=force, is_dir=True)) for s, p in dirs.items()}
            jobs = [BenchmarkJob(path, tmp, gt_modulo(scales), compress_level) for path in images]
            written = 0
            for result in parallel_map(make_test_pair, jobs, workers, f'benchmark {out_dir.name}', progress):
                written += result.crops
                summary.skipped += [result.skipped] if result.skipped else []
            if not written:
                raise ElanError(f'no image of {out_dir} is at least {gt_modulo(scales)} pixels on both sides; '
                                'check --input')
            summary.bytes += sum(tree_bytes(p) for p in tmp.values())
        summary.images += len(images)
        summary.crops += written
        summary.outputs += [str(p) for p in dirs.values()]
    summary.seconds = time.perf_counter() - start
    return summary
