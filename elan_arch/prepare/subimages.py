"""Sub-image extraction: aligned HR / LR crops of one image, BasicSR's ``extract_subimages`` scheme.

Crops of ``crop_size`` start every ``step`` pixels, plus one flush with the bottom/right edge
(BasicSR's ``thresh_size = 0``); they are numbered row by row, ``<stem>_s001.png`` onwards. Here
the positions are computed once on the HR image mod-cropped to the least common multiple of the
scales, so that every position is a multiple of every scale and the LR crop of scale ``s``
(``crop_size/s`` at ``position/s``) covers exactly the HR crop, and one HR LMDB serves all scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.images import bicubic_downscale, mod_crop, read_image, write_png


def crop_positions(length: int, crop_size: int, step: int) -> List[int]:
    """Start offsets of the crops along one axis of ``length`` pixels (empty if it is too short)."""
    if length < crop_size:
        return []
    positions = list(range(0, length - crop_size + 1, step))
    if length - (positions[-1] + crop_size) > 0:
        positions.append(length - crop_size)
    return positions


@dataclass(frozen=True)
class CropJob:
    """Everything one worker needs to cut one HR image (and its LR images) into sub-images.

    ``lr_paths[s]`` is the LR image of scale ``s`` to crop, or None to make it from HR with
    :func:`bicubic_downscale`. ``out_dirs`` maps 1 (HR) and each scale to the folder of its crops.
    """

    hr_path: Path
    lr_paths: Dict[int, Optional[Path]]
    out_dirs: Dict[int, Path]
    crop_size: int
    step: int
    compress_level: int


@dataclass(frozen=True)
class CropResult:
    """How many crops of one image were written (per dataset), or why the image was skipped."""

    crops: int
    skipped: Optional[str] = None


def _lr_image(job: CropJob, hr: np.ndarray, scale: int) -> np.ndarray:
    """The LR image of ``scale`` for ``hr``: read and size-checked, or made by bicubic downscaling."""
    lr_path = job.lr_paths[scale]
    if lr_path is None:
        return bicubic_downscale(mod_crop(hr, scale), scale)
    lr = read_image(lr_path)
    expected = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != expected:
        raise ElanError(f'{lr_path} is {lr.shape[0]}x{lr.shape[1]} but its HR image {job.hr_path} is '
                        f'{hr.shape[0]}x{hr.shape[1]}, which at scale x{scale} needs an LR image of '
                        f'{expected[0]}x{expected[1]}; replace the LR file (or remove the LR folder so '
                        f'that LR images are made from HR)')
    return lr


def extract_crops(job: CropJob) -> CropResult:
    """Cut ``job.hr_path`` and its LR images into aligned crops and write them as PNG files."""
    hr = read_image(job.hr_path)
    scales = sorted(s for s in job.out_dirs if s != 1)
    modulo = int(np.lcm.reduce(scales))
    height, width = mod_crop(hr, modulo).shape[:2]
    ys = crop_positions(height, job.crop_size, job.step)
    xs = crop_positions(width, job.crop_size, job.step)
    if not ys or not xs:
        return CropResult(0, skipped=f'{job.hr_path}: {hr.shape[0]}x{hr.shape[1]} is smaller than '
                          f'the crop size {job.crop_size} (after cropping to a multiple of {modulo})')
    images: List[Tuple[int, np.ndarray]] = [(1, hr)] + [(s, _lr_image(job, hr, s)) for s in scales]
    index = 0
    for y in ys:
        for x in xs:
            index += 1
            for scale, img in images:
                size = job.crop_size // scale
                crop = img[y // scale:y // scale + size, x // scale:x // scale + size]
                write_png(job.out_dirs[scale] / f'{job.hr_path.stem}_s{index:03d}.png', crop, job.compress_level)
    return CropResult(index)
