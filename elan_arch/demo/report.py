"""Pictures the demo leaves behind: bicubic / ELAN / original crops side by side, and the PSNR curve.

* :func:`comparison_image`: for one held-out photo, the same HR crop (the most detailed one) of
  bicubic upscaling, ELAN's output and the original, labelled with each image's Y-channel PSNR.
* :func:`validation_curve`: the validation PSNR after each validation of a BasicSR training log,
  against the bicubic PSNR as a horizontal line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path

#: BasicSR's validation result lines: ``# psnr: 28.6446	Best: ...``.
PSNR_LINE = re.compile(r'# psnr: ([\d.]+)')


def detailed_crop(img: np.ndarray, size: int) -> Tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` crop of ``img`` (H, W[, C]) with the most gradient energy."""
    grey = img.mean(axis=2) if img.ndim == 3 else img.astype(np.float64)
    h, w = grey.shape
    if h < size or w < size:
        return 0, 0
    energy = np.abs(np.diff(grey, axis=0))[:, :-1] + np.abs(np.diff(grey, axis=1))[:-1, :]
    integral = np.pad(energy, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    s = size - 1
    sums = integral[s:, s:] - integral[:-s, s:] - integral[s:, :-s] + integral[:-s, :-s]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left)


def comparison_image(panels: Sequence[Tuple[str, np.ndarray]], out_path: Path, crop: int = 160,
                     zoom: int = 2) -> Path:
    """Write the same ``crop`` x ``crop`` region of each (label, BGR uint8 image) side by side, enlarged
    ``zoom`` times (nearest neighbour, so pixels stay visible), each labelled underneath. The region is
    the most detailed one of the last image (the original). Written atomically; returns ``out_path``."""
    import cv2

    shapes = {img.shape for _, img in panels}
    if len(shapes) != 1:
        raise ElanError(f'{out_path}: the images to compare differ in size ({sorted(shapes)})')
    top, left = detailed_crop(panels[-1][1], crop)
    tiles = []
    for label, img in panels:
        tile = img[top:top + crop, left:left + crop]
        tile = cv2.resize(tile, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        caption = np.full((34, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(caption, label, (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([tile, caption]))
        tiles.append(np.full((tiles[-1].shape[0], 6, 3), 255, np.uint8))
    ok, png = cv2.imencode('.png', np.hstack(tiles[:-1]))
    if not ok:
        raise ElanError(f'{out_path}: could not encode the comparison image')
    with atomic_path(out_path, overwrite=True) as tmp:
        tmp.write_bytes(png.tobytes())
    return out_path


def validation_psnrs(log_path: Path) -> List[float]:
    """Validation PSNRs in the order a BasicSR training log printed them (one per validation)."""
    if not log_path.is_file():
        raise ElanError(f'{log_path}: no such training log')
    return [float(m.group(1)) for m in PSNR_LINE.finditer(log_path.read_text(encoding='utf-8', errors='replace'))]


def validation_curve(iterations: Sequence[int], psnrs: Sequence[float], bicubic_psnr: float, out_path: Path,
                     title: str) -> Path:
    """Write the PSNR-over-iterations plot with the bicubic line (PNG, atomically); returns ``out_path``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if len(iterations) != len(psnrs) or not psnrs:
        raise ElanError(f'{out_path}: {len(psnrs)} validation results for {len(iterations)} validations')
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(iterations, psnrs, marker='o', color='tab:orange', label='ELAN-light (validation)')
    ax.axhline(bicubic_psnr, color='tab:blue', linestyle='--', label=f'bicubic ({bicubic_psnr:.2f} dB)')
    ax.set_xlabel('iteration')
    ax.set_ylabel('PSNR, Y channel (dB)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right')
    fig.tight_layout()
    with atomic_path(out_path, overwrite=True) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
    return out_path
