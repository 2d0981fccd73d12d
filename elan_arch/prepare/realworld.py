"""``elan prepare realworld`` / ``realworld-paired``: training sets for BasicSR's Real-ESRNet / Real-ESRGAN.

HR-only sets (DF2K, OST, one's own photos) for ``RealESRGANDataset``, which degrades on the fly::

    --input DF2K_HR OST ...            image folders (stems unique across them: they become the crops' names)
    <output>/<name>_sub/               crops: <stem>_s001.png ... and <stem>T0_s001.png ... of the copies
    <output>/meta_info/meta_info_<name>_sub.txt   one line per crop: '<name>_sub/<crop>.png (h,w,c)'
    <output>/<name>_sub.lmdb/          the same crops in an LMDB (--backend lmdb), keys <crop stem>

Per image, as Real-ESRGAN's recipe (``scripts/generate_multiscale_DF2K.py``, ``extract_subimages.py``,
``generate_meta_info.py``): the image itself plus multiscale copies ``T0`` .. ``T3`` (factors 0.75, 0.5, 1/3
and the copy whose shortest edge is 400 pixels; sizes truncated to integers, Pillow's Lanczos resampling),
then crops of 400 pixels every 200 (one more flush with the bottom/right edge). One deliberate difference:
a copy that would not be smaller than the image (the shortest-edge copy of an image whose shortest edge is 400
or less) is left out and counted, where the upstream script writes an enlarged copy. An image or copy
smaller than the crop on a side gives no crops (counted; upstream's script fails on it).

Paired sets for ``RealESRGANPairedDataset`` (fine-tuning on one's own LQ/GT pairs)::

    --gt GT --lq LQ --scale s          LQ images named like their GT image (0001.png or 0001x4.png)
    <output>/<gt name>_sub/, <output>/<lq name>_sub/    aligned crops (LQ crops of crop_size/s)
    <output>/meta_info/meta_info_<gt name>_pair.txt      lines '<gt name>_sub/<crop>.png, <lq name>_sub/<crop>.png'
    <output>/<gt name>_sub.lmdb/, <lq name>_sub.lmdb/    (--backend lmdb) the same keys in both

The option file then reads ``dataroot_gt`` (and ``dataroot_lq``) = ``<output>`` with the meta_info file, or the
LMDB folders (``io_backend: {type: lmdb}``); :func:`dataset_options` gives these lines. Damaged images are
refused by name (:func:`elan_arch.utils.images.read_image`); every output is built under a temporary name and
renamed into place only when the whole run succeeded.
"""
from __future__ import annotations

import collections
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elan_arch.data.lmdb_check import check_lmdb_pair
from elan_arch.prepare.div2k import check_scales
from elan_arch.prepare.jobs import PrepareSummary, parallel_map, tree_bytes
from elan_arch.prepare.lmdb_writer import write_lmdb
from elan_arch.prepare.subimages import CropJob, crop_positions, extract_crops
from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike, atomic_path, check_output_free
from elan_arch.utils.images import PNG_COMPRESSION, check_key, list_images, png_shape, read_image, write_png

#: Real-ESRGAN's multiscale copies of DF2K: these factors, then the copy whose shortest edge is SHORTEST_EDGE.
MULTISCALE_FACTORS: Tuple[float, ...] = (0.75, 0.5, 1 / 3)
SHORTEST_EDGE = 400
#: Real-ESRGAN's sub-images (``extract_subimages.py --crop_size 400 --step 200``); RealESRGANDataset crops (or
#: reflect-pads) every image it reads to 400 x 400.
CROP_SIZE, STEP = 400, 200
BACKENDS = ('folder', 'lmdb')
_ENLARGING = 'multiscale copies left out because they would not be smaller than their image'
_TOO_SMALL = 'images or copies left out because they are smaller than the crop on a side'


def multiscale_sizes(width: int, height: int) -> List[Tuple[str, Tuple[int, int]]]:
    """``[(suffix, (width, height)), ...]`` of the copies ``T0`` .. ``T3``, computed as Real-ESRGAN's
    ``generate_multiscale_DF2K.py`` does (``int()`` truncation; the last copy's shortest edge is
    :data:`SHORTEST_EDGE`, a square image counting its height)."""
    sizes = [(f'T{index}', (int(width * factor), int(height * factor)))
             for index, factor in enumerate(MULTISCALE_FACTORS)]
    if width < height:
        edge = (SHORTEST_EDGE, int(SHORTEST_EDGE * (height / width)))
    else:
        edge = (int(SHORTEST_EDGE * (width / height)), SHORTEST_EDGE)
    return sizes + [(f'T{len(MULTISCALE_FACTORS)}', edge)]


def lanczos_resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``img`` (H x W x 3 uint8 BGR) resized to ``size`` (width, height) by Pillow's ``Image.LANCZOS``, the
    resampling of Real-ESRGAN's multiscale script (on RGB, so the result equals Pillow's on the file)."""
    from PIL import Image

    rgb = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
    return np.ascontiguousarray(np.asarray(rgb.resize(size, resample=Image.LANCZOS))[:, :, ::-1])


@dataclass(frozen=True)
class RealworldJob:
    """One HR image to cut: the image (and with ``multiscale`` its copies) into crops in ``out_dir``."""

    path: Path
    out_dir: Path
    multiscale: bool
    crop_size: int
    step: int
    compress_level: int


@dataclass(frozen=True)
class RealworldResult:
    """The crops one image gave (file names), and ``(reason, example)`` for each piece left out."""

    crops: Tuple[str, ...]
    left_out: Tuple[Tuple[str, str], ...]


def cut_image(job: RealworldJob) -> RealworldResult:
    """Read ``job.path`` (refused if damaged), make its multiscale copies and write the crops of each."""
    img = read_image(job.path)
    height, width = img.shape[:2]
    pieces: List[Tuple[str, np.ndarray]] = [('', img)]
    left_out: List[Tuple[str, str]] = []
    if job.multiscale:
        for suffix, (w, h) in multiscale_sizes(width, height):
            if w * h >= width * height:
                left_out.append((_ENLARGING, f'{job.path.name} {suffix}: {w}x{h} from {width}x{height}'))
            elif min(w, h) > 0:
                pieces.append((suffix, lanczos_resize(img, (w, h))))
    crops: List[str] = []
    for suffix, piece in pieces:
        h, w = piece.shape[:2]
        if job.crop_size:
            size, ys, xs = job.crop_size, crop_positions(h, job.crop_size, job.step), crop_positions(w, job.crop_size,
                                                                                                   job.step)
        else:
            size, ys, xs = max(h, w), [0], [0]
        if not ys or not xs:
            left_out.append((_TOO_SMALL, f'{job.path.name}{" " + suffix if suffix else ""}: {w}x{h}'))
            continue
        index = 0
        for y in ys:
            for x in xs:
                index += 1
                name = f'{job.path.stem}{suffix}_s{index:03d}.png'
                write_png(job.out_dir / name, piece[y:y + size, x:x + size], job.compress_level)
                crops.append(name)
    return RealworldResult(tuple(crops), tuple(left_out))


def _left_out_lines(left_out: Sequence[Tuple[str, str]]) -> List[str]:
    """One line per reason: how many, and up to three examples."""
    by_reason: Dict[str, List[str]] = collections.defaultdict(list)
    for reason, example in left_out:
        by_reason[reason].append(example)
    return [f'{len(examples)} {reason} (e.g. {"; ".join(examples[:3])})' for reason, examples in by_reason.items()]


def _check_crop(crop_size: int, step: int) -> None:
    if crop_size < 0 or (crop_size and step <= 0):
        raise ElanError(f'--crop-size {crop_size} / --step {step}: the crop size must be positive (or 0 for whole '
                        f'images) and the step positive')


def _input_images(inputs: Sequence[PathLike]) -> List[Path]:
    """Every image of the input folders; stems must be unique across them (they name the crops and keys)."""
    if not inputs:
        raise ElanError('--input: name at least one folder of HR images')
    files: List[Path] = []
    seen: Dict[str, Path] = {}
    for folder in inputs:
        for path in list_images(Path(folder), 'input'):
            check_key(path.stem, path)
            if path.stem in seen:
                raise ElanError(f'{seen[path.stem]} and {path} have the same name stem, which would name their crops '
                                f'alike; rename one, or prepare the folders separately (with different --name)')
            seen[path.stem] = path
            files.append(path)
    return files


def default_name(folders: Sequence[PathLike]) -> str:
    """The set's name from its folders: their names joined by '+' (``DF2K_HR+OST``)."""
    return '+'.join(Path(folder).resolve().name for folder in folders)


def realworld_outputs(output: Path, name: str, backends: Sequence[str]) -> Dict[str, Path]:
    """The paths :func:`prepare_realworld` writes: ``crops`` and ``meta_info`` (folder), ``lmdb``."""
    paths = {}
    if 'folder' in backends:
        paths.update(crops=output / f'{name}_sub', meta_info=output / 'meta_info' / f'meta_info_{name}_sub.txt')
    if 'lmdb' in backends:
        paths['lmdb'] = output / f'{name}_sub.lmdb'
    return paths


def _check_backends(backends: Sequence[str]) -> Tuple[str, ...]:
    backends = tuple(dict.fromkeys(backends))
    unknown = [b for b in backends if b not in BACKENDS]
    if not backends or unknown:
        raise ElanError(f'--backend {" ".join(backends)}: choose from {", ".join(BACKENDS)}')
    return backends


def _crop_folder(stack: contextlib.ExitStack, final: Optional[Path], staging_parent: Path, force: bool) -> Path:
    """The folder crops are written to, living as long as ``stack``: the temporary path of ``final`` (renamed
    into place when all succeeds), or a staging folder removed at the end (``final`` None: the crops only feed
    an LMDB)."""
    if final is not None:
        return stack.enter_context(atomic_path(final, overwrite=force, is_dir=True))
    staging_parent.mkdir(parents=True, exist_ok=True)
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix='.elan-crops-', dir=staging_parent)))


def _meta_lines(folder: Path, prefix: str) -> List[str]:
    """BasicSR's ``generate_meta_info`` lines of the PNG crops in ``folder``: ``<prefix>/<file> (h,w,c)``."""
    return [f'{prefix}/{p.name} ({",".join(map(str, png_shape(p.read_bytes())))})\n'
            for p in sorted(folder.glob('*.png'))]


def prepare_realworld(inputs: Sequence[PathLike], output: PathLike, name: Optional[str] = None,
                      backends: Sequence[str] = ('folder',), multiscale: bool = True, crop_size: int = CROP_SIZE,
                      step: int = STEP, workers: int = 1, force: bool = False,
                      compress_level: int = PNG_COMPRESSION, progress: bool = True) -> PrepareSummary:
    """Build the HR-only set of ``RealESRGANDataset`` (see the module docstring); return what was done.

    Args:
        inputs: Folders of HR images (stems unique across them).
        output: Where the outputs go (the ``dataroot_gt`` of the folder backend).
        name: The set's name in the output names (default: :func:`default_name`).
        backends: ``folder`` (crops + meta_info), ``lmdb``, or both.
        multiscale: Add the copies ``T0`` .. ``T3`` of every image.
        crop_size, step: Crops (Real-ESRGAN: 400 every 200); ``crop_size`` 0 keeps images and copies whole.
        workers: Processes cutting images in parallel.
        force: Replace existing outputs (otherwise they raise :class:`ElanError`).
        compress_level: PNG zlib level of the crops.
        progress: Show progress bars.
    """
    start = time.perf_counter()
    backends = _check_backends(backends)
    _check_crop(crop_size, step)
    files = _input_images(inputs)
    out = Path(output)
    name = name or default_name(inputs)
    check_key(name.replace('+', ''), Path(name))
    outputs = realworld_outputs(out, name, backends)
    for path in outputs.values():
        check_output_free(path, force)

    summary = PrepareSummary(images=len(files))
    left_out: List[Tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        crops = _crop_folder(stack, outputs.get('crops'), out, force)
        jobs = [RealworldJob(p, crops, multiscale, crop_size, step, compress_level)
                for p in sorted(files, key=lambda p: p.stat().st_size, reverse=True)]
        for result in parallel_map(cut_image, jobs, workers, 'multiscale + crops' if multiscale else 'crops',
                                   progress):
            summary.crops += len(result.crops)
            left_out += result.left_out
        if summary.crops == 0:
            raise ElanError(f'no image of {", ".join(map(str, inputs))} gave a crop: every one is smaller than '
                            f'--crop-size {crop_size} on a side; lower --crop-size (or 0: whole images)')
        if 'meta_info' in outputs:
            # renamed into place with the crops, when every step has succeeded
            stack.enter_context(atomic_path(outputs['meta_info'], overwrite=force)).write_text(
                ''.join(_meta_lines(crops, outputs['crops'].name)))
        written = [crops] if 'crops' in outputs else []
        if 'lmdb' in outputs:
            tmp_lmdb = stack.enter_context(atomic_path(outputs['lmdb'], overwrite=force))
            write_lmdb(crops, tmp_lmdb, f'lmdb {outputs["lmdb"].name}', compress_level, progress)
            written.append(tmp_lmdb)
        summary.bytes = sum(tree_bytes(p) for p in written)
    if 'meta_info' in outputs:
        summary.bytes += outputs['meta_info'].stat().st_size
    summary.outputs = [str(p) for p in outputs.values()]
    summary.skipped = _left_out_lines(left_out)
    summary.seconds = time.perf_counter() - start
    return summary


def paired_outputs(output: Path, gt_name: str, lq_name: str, backends: Sequence[str]) -> Dict[str, Path]:
    """The paths :func:`prepare_realworld_pairs` writes: ``gt``, ``lq``, ``meta_info`` (folder), ``gt_lmdb``,
    ``lq_lmdb``."""
    paths = {}
    if 'folder' in backends:
        paths.update(gt=output / f'{gt_name}_sub', lq=output / f'{lq_name}_sub',
                     meta_info=output / 'meta_info' / f'meta_info_{gt_name}_pair.txt')
    if 'lmdb' in backends:
        paths.update(gt_lmdb=output / f'{gt_name}_sub.lmdb', lq_lmdb=output / f'{lq_name}_sub.lmdb')
    return paths


def _lq_partners(gt_files: List[Path], lq_folder: Path, scale: int) -> Dict[Path, Path]:
    """The LQ image of each GT image: same stem, or the stem with ``x<scale>`` (DIV2K's naming)."""
    by_stem = {p.stem: p for p in list_images(lq_folder, 'LQ')}
    partners = {}
    for gt in gt_files:
        lq = by_stem.pop(f'{gt.stem}x{scale}', None) or by_stem.pop(gt.stem, None)
        if lq is None:
            raise ElanError(f'{lq_folder} has no LQ image for {gt} (expected {gt.stem}.png or {gt.stem}x{scale}.png '
                            f'there); add it, or move the GT image out')
        partners[gt] = lq
    if by_stem:
        extra = sorted(by_stem.values())
        raise ElanError(f'{extra[0]} has no GT image in the GT folder ({len(extra)} such LQ image(s)); add its GT '
                        f'image or move it out')
    return partners


def prepare_realworld_pairs(gt: PathLike, lq: PathLike, output: PathLike, scale: int,
                            backends: Sequence[str] = ('folder',), crop_size: int = CROP_SIZE, step: int = STEP,
                            workers: int = 1, force: bool = False, compress_level: int = PNG_COMPRESSION,
                            progress: bool = True) -> PrepareSummary:
    """Build the paired set of ``RealESRGANPairedDataset`` (see the module docstring); return what was done.

    ``crop_size`` and ``step`` must be multiples of ``scale``; every LQ image must be its GT image's size
    divided by ``scale`` (after cropping the GT image to a multiple of ``scale``). Other arguments as
    :func:`prepare_realworld`.
    """
    start = time.perf_counter()
    backends = _check_backends(backends)
    (scale,) = check_scales([scale], crop_size, step)
    gt_dir, lq_dir, out = Path(gt), Path(lq), Path(output)
    gt_files = _input_images([gt_dir])
    partners = _lq_partners(gt_files, lq_dir, scale)
    gt_name, lq_name = gt_dir.resolve().name, lq_dir.resolve().name
    if gt_name == lq_name:
        raise ElanError(f'--gt {gt} and --lq {lq} are folders of the same name ({gt_name}), which would name their '
                        'crop folders alike; rename one of them')
    outputs = paired_outputs(out, gt_name, lq_name, backends)
    for path in outputs.values():
        check_output_free(path, force)

    summary = PrepareSummary(images=len(gt_files))
    with contextlib.ExitStack() as stack:
        dirs = {1: _crop_folder(stack, outputs.get('gt'), out, force),
                scale: _crop_folder(stack, outputs.get('lq'), out, force)}
        jobs = [CropJob(p, {scale: partners[p]}, dirs, crop_size, step, compress_level)
                for p in sorted(gt_files, key=lambda p: p.stat().st_size, reverse=True)]
        for result in parallel_map(extract_crops, jobs, workers, f'crops x{scale}', progress):
            summary.crops += result.crops
            summary.skipped += [result.skipped] if result.skipped else []
        if summary.crops == 0:
            raise ElanError(f'no GT image in {gt} is at least --crop-size {crop_size} pixels on both sides; lower '
                            '--crop-size/--step')
        if 'meta_info' in outputs:
            lines = [f'{gt_name}_sub/{p.name}, {lq_name}_sub/{p.name}\n' for p in sorted(dirs[1].glob('*.png'))]
            stack.enter_context(atomic_path(outputs['meta_info'], overwrite=force)).write_text(''.join(lines))
        written = [dirs[1], dirs[scale]] if 'gt' in outputs else []
        if 'gt_lmdb' in outputs:
            lmdbs = {key: stack.enter_context(atomic_path(outputs[key], overwrite=force))
                     for key in ('gt_lmdb', 'lq_lmdb')}
            for key, folder in (('gt_lmdb', dirs[1]), ('lq_lmdb', dirs[scale])):
                write_lmdb(folder, lmdbs[key], f'lmdb {outputs[key].name}', compress_level, progress)
            check_lmdb_pair(lmdbs['gt_lmdb'], lmdbs['lq_lmdb'], scale,
                            names=(outputs['gt_lmdb'].name, outputs['lq_lmdb'].name), require_suffix=False,
                            strict=True)
            written += list(lmdbs.values())
        summary.bytes = sum(tree_bytes(p) for p in written)
    summary.outputs = [str(p) for p in outputs.values()]
    summary.seconds = time.perf_counter() - start
    return summary


def dataset_options(outputs: Dict[str, Path], paired: bool = False) -> List[str]:
    """The ``datasets: train:`` lines of an option file that reads these outputs (per back-end)."""
    lines = []
    dataset = 'RealESRGANPairedDataset' if paired else 'RealESRGANDataset'
    if 'meta_info' in outputs:
        root = outputs['meta_info'].parent.parent
        lines += [f'folder: type: {dataset}, dataroot_gt: {root}, ' + (f'dataroot_lq: {root}, ' if paired else '') +
                  f'meta_info: {outputs["meta_info"]}, io_backend: {{type: disk}}']
    if 'lmdb' in outputs or 'gt_lmdb' in outputs:
        gt_lmdb = outputs.get('lmdb', outputs.get('gt_lmdb'))
        lines += [f'lmdb:   type: {dataset}, dataroot_gt: {gt_lmdb}, ' +
                  (f'dataroot_lq: {outputs["lq_lmdb"]}, ' if paired else '') + 'io_backend: {type: lmdb}']
    return lines
