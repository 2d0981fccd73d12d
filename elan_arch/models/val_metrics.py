"""Validation and testing on sets without ground truth (real low-resolution photos), and LPIPS when present.

basicsr 1.4.2 applies every metric of ``val: metrics:`` to every validation or test set. On a set read by
``SingleImageDataset`` (LQ images only) a full-reference metric (``calculate_psnr``/``calculate_ssim``: they need
``img2``, the ground truth) stops the run with ``TypeError: ... missing 1 required positional argument: 'img2'``
(in training, at the first validation). So one option file could not validate a paired set with PSNR and real
photos with NIQE. :func:`gt_free_validation` wraps ``SRModel.nondist_validation`` (which ``RealESRNetModel`` and
``RealESRGANModel`` reach through ``super()``) and ``ELANModel``'s copy of it: on a set without ground truth it
computes only the metrics that need none (``calculate_niqe``), logs which were skipped once per set, and leaves
sets with ground truth as basicsr computes them.

:func:`calculate_lpips` (``type: calculate_lpips`` in ``val: metrics:``; lower is better, so ``better: lower``)
is LPIPS (Zhang et al., 2018; AlexNet variant) from the ``lpips`` package, which loads torchvision's ImageNet
AlexNet. It never downloads: without the package or the weights it stops with :class:`ElanError` saying what to
install and which file to put where (:func:`lpips_weights_path`).

:func:`install` (called by :func:`elan_arch.training.basicsr_fixes.apply`) puts both in place.
"""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

from elan_arch.utils.errors import ElanError

#: torchvision's ImageNet AlexNet (``AlexNet_Weights.IMAGENET1K_V1``), the backbone of LPIPS's ``net='alex'``.
ALEXNET_URL = 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'
_REPORTED: set = set()
_LPIPS: Dict[str, Any] = {}


def needs_ground_truth(metric_opt: Dict[str, Any]) -> bool:
    """Whether the metric of this ``val: metrics:`` entry takes the ground truth (``img2``) as a required
    argument (PSNR, SSIM, LPIPS) or not (NIQE)."""
    from basicsr.utils.registry import METRIC_REGISTRY

    function = METRIC_REGISTRY.get(metric_opt['type'])
    parameter = inspect.signature(function).parameters.get('img2')
    return parameter is not None and parameter.default is inspect.Parameter.empty


def has_ground_truth(dataset: Any) -> bool:
    """Whether a validation/test dataset yields ground truth: it names a ``dataroot_gt`` (PairedImageDataset and
    the like; SingleImageDataset does not)."""
    opt = getattr(dataset, 'opt', None) or {}
    return bool(opt.get('dataroot_gt'))


def metrics_without_ground_truth(metrics: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The entries of ``metrics`` computable on a set without ground truth."""
    return {name: opt for name, opt in metrics.items() if not needs_ground_truth(opt)}


def gt_free_validation(nondist_validation: Callable) -> Callable:
    """Wrap ``SRModel.nondist_validation`` so that a set without ground truth gets only the metrics that need
    none (see the module docstring); sets with ground truth are validated by basicsr's code unchanged."""
    if getattr(nondist_validation, 'gt_free', False):
        return nondist_validation

    @functools.wraps(nondist_validation)
    def wrapper(self: Any, dataloader: Any, current_iter: Any, tb_logger: Any, save_img: bool) -> Any:
        metrics = self.opt['val'].get('metrics')
        if not metrics or has_ground_truth(dataloader.dataset):
            return nondist_validation(self, dataloader, current_iter, tb_logger, save_img)
        kept = metrics_without_ground_truth(metrics)
        name = dataloader.dataset.opt.get('name')
        if kept.keys() != metrics.keys() and name not in _REPORTED:
            _REPORTED.add(name)
            skipped = ', '.join(m for m in metrics if m not in kept)
            from basicsr.utils import get_root_logger

            get_root_logger().info(f'Validation set {name} has no ground truth ({type(dataloader.dataset).__name__}):'
                                   f' {skipped} skipped there' + (f', {", ".join(kept)} computed' if kept else ''))
        # basicsr makes metric_results from the metrics when it is missing, and only zeroes it otherwise: so it is
        # dropped before (made from the kept metrics) and after (made again from all of them by the next set)
        self.__dict__.pop('metric_results', None)
        self.opt['val']['metrics'] = kept or None
        try:
            return nondist_validation(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            self.opt['val']['metrics'] = metrics
            self.__dict__.pop('metric_results', None)

    wrapper.gt_free = True
    return wrapper


def lpips_weights_path() -> Path:
    """Where torchvision looks for the AlexNet weights LPIPS needs: ``<torch hub dir>/checkpoints/<file>``
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(ALEXNET_URL)


def lpips_network() -> Any:
    """The LPIPS AlexNet network (built once), or :class:`ElanError` saying how to put it in place offline."""
    if 'alex' in _LPIPS:
        return _LPIPS['alex']
    try:
        import lpips
    except ImportError as err:
        raise ElanError('metric calculate_lpips needs the lpips package: pip install lpips, then the AlexNet weights '
                        f'({_weights_hint()})') from err
    weights = lpips_weights_path()
    if not weights.is_file():
        raise ElanError(f'metric calculate_lpips: the AlexNet weights are not at {weights}; this machine would have to '
                        f'download them, which is not done here: {_weights_hint()}')
    _LPIPS['alex'] = lpips.LPIPS(net='alex', verbose=False).eval()
    return _LPIPS['alex']


def _weights_hint() -> str:
    return (f'download {ALEXNET_URL} on a machine online and copy it to {lpips_weights_path()} '
            '(set TORCH_HOME to use another folder); the LPIPS layers themselves ship in the lpips package')


def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int, input_order: str = 'HWC',
                    **kwargs: Any) -> float:
    """LPIPS (AlexNet) between ``img`` and the ground truth ``img2``: BGR uint8 images as basicsr's metrics get
    them (H x W x 3, or 3 x H x W with ``input_order='CHW'``), ``crop_border`` pixels left out on each side.
    Lower is better (0 for equal images)."""
    import torch

    network = lpips_network()
    pair = []
    for image in (img, img2):
        image = np.asarray(image)
        if input_order == 'CHW':
            image = image.transpose(1, 2, 0)
        if crop_border:
            image = image[crop_border:-crop_border, crop_border:-crop_border]
        rgb = image[..., ::-1].astype(np.float32) / 127.5 - 1.  # BGR [0, 255] -> RGB [-1, 1]
        pair.append(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None])
    if pair[0].shape != pair[1].shape:
        raise ElanError(f'calculate_lpips: the images differ in size ({tuple(pair[0].shape)} vs '
                        f'{tuple(pair[1].shape)})')
    with torch.no_grad():
        return float(network(pair[0], pair[1]).item())


def install() -> None:
    """Wrap ``SRModel.nondist_validation`` (:func:`gt_free_validation`) and register :func:`calculate_lpips` in
    basicsr's ``METRIC_REGISTRY`` (both idempotent)."""
    from basicsr.models.sr_model import SRModel
    from basicsr.utils.registry import METRIC_REGISTRY

    from elan_arch.models.elan_model import ELANModel

    # ELANModel holds its own (wrapped) copy of SRModel's; the real-world models reach SRModel's through super()
    for cls in (SRModel, ELANModel):
        cls.nondist_validation = gt_free_validation(cls.__dict__['nondist_validation'])
    if 'calculate_lpips' not in METRIC_REGISTRY:
        METRIC_REGISTRY.register()(calculate_lpips)

