"""``val.tb_images: N``: validation images in TensorBoard, next to the scalars BasicSR logs.

At each validation the first ``N`` images of each validation set are logged as one image each,
``val_images/<set>/<image>``: a crop of the LR image upscaled by MATLAB bicubic | the network's output | the
ground truth, side by side (uint8 RGB, the crop at most :data:`CROP` HR pixels square, at the image's centre).
The step is the iteration, so TensorBoard's slider shows the output improve. Without the option (or with 0)
validation runs exactly as BasicSR's; nothing is logged without a TensorBoard logger
(``logger.use_tb_logger``).

:func:`with_tb_images` wraps ``nondist_validation`` (BasicSR's ``SRModel``'s: ``ELANModel`` uses it, and the
``basicsr`` command wraps ``SRModel``'s for BasicSR's own models, :mod:`elan_arch.training.basicsr_fixes`). It
reads the images the validation already computes (``feed_data`` / ``get_current_visuals``), so nothing runs
twice.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError

#: Side of the logged crops in HR pixels (whole images smaller than that).
CROP = 192
#: Width of the white line between the three panels.
GAP = 2


def tb_images_count(opt: Dict[str, Any]) -> int:
    """``val.tb_images`` of the options: 0 when absent, ``~`` or false; ElanError unless a non-negative integer."""
    value = (opt.get('val') or {}).get('tb_images')
    if value is None or value is False:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ElanError(f'option val.tb_images: {value!r} must be a number of validation images (e.g. 4), or ~')
    return value


def _uint8_rgb(tensor) -> np.ndarray:
    """(1, C, H, W) float in [0, 1] -> (H, W, C) uint8, rounded as ``basicsr.utils.tensor2img``."""
    img = tensor[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255.0).round().astype(np.uint8)


def panel(lq: np.ndarray, sr: np.ndarray, gt: np.ndarray, scale: int) -> np.ndarray:
    """bicubic(LR crop) | SR crop | GT crop (uint8 RGB, HR size), centred crops of at most :data:`CROP` pixels
    aligned to ``scale``."""
    from basicsr.utils.matlab_functions import imresize

    h, w = gt.shape[:2]
    ch, cw = min(h, CROP) // scale * scale, min(w, CROP) // scale * scale
    top, left = (h - ch) // 2 // scale * scale, (w - cw) // 2 // scale * scale
    lq_crop = lq[top // scale:(top + ch) // scale, left // scale:(left + cw) // scale]
    bicubic = np.clip(np.round(imresize(lq_crop.astype(np.float64) / 255., scale) * 255.), 0, 255).astype(np.uint8)
    crops = [bicubic[:ch, :cw], sr[top:top + ch, left:left + cw], gt[top:top + ch, left:left + cw]]
    gap = np.full((ch, GAP, 3), 255, np.uint8)
    return np.concatenate([crops[0], gap, crops[1], gap, crops[2]], axis=1)


class ValidationImages:
    """Collects the panels of the first ``count`` images of one validation run."""

    def __init__(self, count: int, scale: int) -> None:
        self.count, self.scale = count, scale
        self.name = ''
        self.panels: List[Tuple[str, np.ndarray]] = []

    def seen(self, data: Dict[str, Any]) -> None:
        """``feed_data``'s batch: remember the image's name (BasicSR names results after ``lq_path``)."""
        paths = data.get('lq_path') or data.get('gt_path') or ['']
        self.name = os.path.splitext(os.path.basename(paths[0]))[0] or f'{len(self.panels):03d}'

    def visuals(self, visuals: Dict[str, Any]) -> None:
        """``get_current_visuals``'s images (``lq``, ``result``, ``gt``): the panel, while fewer than ``count``."""
        if len(self.panels) >= self.count or 'gt' not in visuals:
            return
        lq, sr, gt = (_uint8_rgb(visuals[k]) for k in ('lq', 'result', 'gt'))
        self.panels.append((self.name, panel(lq, sr, gt, self.scale)))

    def write(self, tb_logger: Any, dataset: str, step: int) -> None:
        for name, image in self.panels:
            tb_logger.add_image(f'val_images/{dataset}/{name}', image, step, dataformats='HWC')
        tb_logger.flush()


def with_tb_images(nondist_validation: Callable) -> Callable:
    """``nondist_validation`` that also logs :class:`ValidationImages` when ``val.tb_images`` is set and there is
    a TensorBoard logger (idempotent: a wrapped method is returned as it is)."""
    if getattr(nondist_validation, 'logs_tb_images', False):
        return nondist_validation

    @functools.wraps(nondist_validation)
    def wrapper(self: Any, dataloader: Any, current_iter: int, tb_logger: Any, save_img: bool) -> Any:
        count = tb_images_count(self.opt)
        if not count or tb_logger is None:
            return nondist_validation(self, dataloader, current_iter, tb_logger, save_img)
        images = ValidationImages(count, int(self.opt['scale']))
        feed_data, get_visuals = self.feed_data, self.get_current_visuals

        def feed(data: Dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            images.seen(data)
            return feed_data(data, *args, **kwargs)

        def visuals() -> Dict[str, Any]:
            result = get_visuals()
            images.visuals(result)
            return result

        self.feed_data, self.get_current_visuals = feed, visuals
        try:
            result = nondist_validation(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            del self.feed_data, self.get_current_visuals  # the class's methods again
        images.write(tb_logger, dataloader.dataset.opt['name'], current_iter)
        return result

    wrapper.logs_tb_images = True
    return wrapper
