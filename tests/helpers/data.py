"""Helpers of the ``elan prepare`` tests: small generated images, DIV2K layouts, independent references."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.utils.matlab_functions import imresize


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 BGR image with smooth structure plus noise (PNG neither trivial nor random)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def make_div2k(root: Path, sizes: Sequence[Tuple[int, int]],
               lr: Dict[int, List[np.ndarray]] = None) -> List[np.ndarray]:
    """Write ``DIV2K_train_HR/0001.png ...`` (and ``DIV2K_train_LR_bicubic/X{s}/0001x{s}.png`` for ``lr``)."""
    hrs = [photo_like(h, w, seed) for seed, (h, w) in enumerate(sizes)]
    for index, hr in enumerate(hrs, 1):
        write(root / 'DIV2K_train_HR' / f'{index:04d}.png', hr)
    for scale, images in (lr or {}).items():
        for index, img in enumerate(images, 1):
            write(root / 'DIV2K_train_LR_bicubic' / f'X{scale}' / f'{index:04d}x{scale}.png', img)
    return hrs


def reference_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic LR written out independently: mod-crop, basicsr imresize on [0, 1], round half up."""
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    out = imresize(hr[:h, :w].astype(np.float64) / 255., 1 / scale)
    return np.clip(np.floor(out.astype(np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)


def leftovers(folder: Path, names: Sequence[str]) -> List[str]:
    """Outputs (any of ``names``) or temporary folders (``*.tmp``, ``.elan-*``) left anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*')
                  if p.name in names or p.name.endswith('.tmp') or p.name.startswith('.elan-'))


def paired_lmdb_items(gt: Path, lq: Path, scale: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Every item of BasicSR's own ``PairedImageDataset`` over an LMDB pair, as uint8 BGR (gt, lq) by key."""
    from basicsr.data.paired_image_dataset import PairedImageDataset

    dataset = PairedImageDataset({'dataroot_gt': str(gt), 'dataroot_lq': str(lq), 'io_backend': {'type': 'lmdb'},
                                  'scale': scale, 'phase': 'val'})
    items = {}
    for item in dataset:
        pair = [np.round(item[k].numpy().transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8) for k in ('gt', 'lq')]
        items[item['gt_path']] = tuple(pair)
    return items
