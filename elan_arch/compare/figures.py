"""Paper-style comparison figures of ``elan compare`` (``figures/<set>_<image>.png`` and ``.pdf``).

Each figure shows the HR image with a red box and, beside it, the boxed region of the HR image and of every
model's output, enlarged with nearest-neighbour pixels, the model's PSNR/SSIM on the whole image (Y channel,
as on the page) beneath.

The box is ``--crop x,y,w,h`` (HR pixels, clipped to each image), or chosen where the models disagree most:
the window of that size (a quarter of the image's shorter side, 32 to 160 pixels) with the largest summed
per-pixel standard deviation of the models' outputs (the networks' outputs when two or more networks are
compared, else every model's, bicubic included).

Figures are made from the images the run wrote, one image at a time. With many images only the ``count``
whose models' PSNRs spread widest get one (``--figures``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError

Box = Tuple[int, int, int, int]  # x, y, w, h in HR pixels


def crop_size(height: int, width: int) -> int:
    """Side of the automatic box: a quarter of the shorter side, within [32, 160] and the image."""
    return min(height, width, max(32, min(160, min(height, width) // 4)))


def disagreement_box(outputs: List[np.ndarray], side: int) -> Box:
    """The ``side``-pixel square where the per-pixel standard deviation across ``outputs`` (H x W x 3 uint8,
    at least two) sums highest; the first such square in row order on ties."""
    import cv2

    stack = np.stack([o.astype(np.float32).mean(axis=2) for o in outputs])
    spread = stack.std(axis=0).astype(np.float32)
    sums = cv2.boxFilter(spread, -1, (side, side), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    h, w = spread.shape
    valid = sums[:h - side + 1, :w - side + 1]
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(x), int(y), side, side


def clip_box(box: Box, height: int, width: int) -> Box:
    """``box`` moved and shrunk to fit an image of ``height`` x ``width``."""
    x, y, w, h = box
    w, h = min(w, width), min(h, height)
    return min(max(x, 0), width - w), min(max(y, 0), height - h), w, h


def parse_crop(text: str) -> Box:
    """``x,y,w,h`` (HR pixels, non-negative, w and h at least 1); ValueError otherwise."""
    parts = text.split(',')
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f'{text!r}: expected x,y,w,h in HR pixels, e.g. 120,80,96,96')
    x, y, w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ValueError(f'{text!r}: width and height must be at least 1')
    return x, y, w, h


def chosen_images(images: List[Dict[str, Any]], count: int) -> List[Dict[str, Any]]:
    """The ``count`` images whose models' PSNRs spread widest, in the set's order."""
    def spread(img: Dict[str, Any]) -> float:
        values = [m['psnr'] for m in img['metrics'].values() if math.isfinite(m['psnr'])]
        return max(values) - min(values) if len(values) > 1 else -1.
    ranked = sorted(range(len(images)), key=lambda i: -spread(images[i]))[:max(count, 0)]
    return [images[i] for i in sorted(ranked)]


def _read(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ElanError(f'{path}: cannot read this image back')
    return img[..., ::-1]  # RGB for matplotlib


def draw_figure(gt: np.ndarray, crops: List[Tuple[str, np.ndarray]], box: Box, title: str,
                out_stem: Path) -> List[Path]:
    """Write ``out_stem.png`` and ``.pdf``: ``gt`` (RGB) with ``box`` on the left, ``crops`` (label, RGB image)
    boxed on the right in two rows; returns the paths."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    x, y, w, h = box
    cols = max(1, math.ceil(len(crops) / 2))
    aspect = gt.shape[0] / gt.shape[1]
    panel = 1.7
    label_space = 0.45  # inches under each crop for two lines of text
    height = 2 * (panel + label_space) + 0.35
    fig = Figure(figsize=(2 * panel / max(aspect, 0.5) + cols * panel * 1.08, height), dpi=150)
    grid = fig.add_gridspec(2, 2 + cols, width_ratios=[1 / max(aspect, 0.5)] * 2 + [1] * cols,
                            left=0.01, right=0.99, top=1 - 0.3 / height, bottom=label_space / height,
                            wspace=0.08, hspace=label_space / panel * 1.1)
    full = fig.add_subplot(grid[:, :2])
    full.imshow(gt, interpolation='nearest')
    full.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor='red', linewidth=1.5))
    full.set_title(title, fontsize=9)
    full.axis('off')
    for k, (label, crop) in enumerate(crops):
        ax = fig.add_subplot(grid[k // cols, 2 + k % cols])
        ax.imshow(crop, interpolation='nearest')
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor('red')
        ax.set_xlabel(label, fontsize=7, labelpad=2)
    paths = [out_stem.with_suffix('.png'), out_stem.with_suffix('.pdf')]
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        fig.savefig(path)
    return paths


def make_figures(root: Path, results: Dict[str, Any], crop: Optional[Box], count: int) -> List[Path]:
    """The figures of the run written in ``root`` (``results`` as :func:`elan_arch.compare.runner.compare`
    builds it), into ``root/figures/``; returns the paths (PNG, PDF)."""
    written: List[Path] = []
    models = results['models']
    networks = [m for m in models if m['params'] is not None]
    for test_set in results['sets']:
        for img in chosen_images(test_set['images'], count):
            folder = root / img['folder']
            done = [m for m in models if m['name'] in img['metrics']]
            if not done:
                continue
            gt = _read(folder / 'GT.png')
            outputs = {m['name']: _read(folder / f'{m["key"]}.png') for m in done}
            if crop is not None:
                box = clip_box(crop, *gt.shape[:2])
            else:
                judged = [outputs[m['name']] for m in networks if m['name'] in outputs]
                judged = judged if len(judged) >= 2 else list(outputs.values())
                side = crop_size(*gt.shape[:2])
                box = disagreement_box(judged, side) if len(judged) >= 2 else (0, 0, side, side)
            x, y, w, h = box
            crops = [('HR (ground truth)\nPSNR / SSIM (Y)', gt[y:y + h, x:x + w])]
            for m in done:
                met = img['metrics'][m['name']]
                label = f'{m["name"]}\n{met["psnr"]:.2f} dB / {met["ssim"]:.4f}'
                crops.append((label, outputs[m['name']][y:y + h, x:x + w]))
            img['figure_box'] = list(box)
            title = f'{img["name"]} ({test_set["name"]}, x{results["scale"]})'
            written += draw_figure(gt, crops, box, title, root / 'figures' / f'{test_set["key"]}_{img["key"]}')
    return written
