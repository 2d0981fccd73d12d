"""Start-up checks of a real-world run (BasicSR's Real-ESRNet / Real-ESRGAN models and their subclasses).

basicsr reads these options only in the first training iteration, after the run's folders exist, and then
fails with a KeyError, an ``assert`` or a shape error deep in the degradation or the discriminator.
:func:`check_realworld_options` (called by :func:`elan_arch.training.startup.check_options`) refuses them
first, naming the option:

* the degradation's options (``resize_prob`` ... ``jpeg_range2``, the model's ``*_usm``) must be present;
* the training set must be a ``RealESRGANDataset`` (it gives the blur kernels the model needs);
* ``gt_size`` is a positive multiple of ``scale``, at most the dataset's 400-pixel crops (``RealESRGANDataset``
  pads or crops every image to 400x400 before the model crops ``gt_size`` out of its degraded copy) and,
  with BasicSR's U-Net discriminator (three 2x downsamplings and skip connections), divisible by 8;
* ``queue_size`` is a positive multiple of the batch each process degrades: ``batch_size_per_gpu``, times
  the GPUs DataParallel uses without a launcher (basicsr only asserts it in the first iteration).

With ``high_order_degradation: false`` the models take paired data and none of this applies.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from elan_arch.utils.errors import ElanError

DATASET_CROP = 400  # RealESRGANDataset's crop_pad_size (hard-coded in basicsr 1.4.2)
DEGRADATION_KEYS = ('resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range',
                    'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
                    'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2',
                    'jpeg_range2')
NET_KEYS = ('gt_usm', )
GAN_KEYS = ('l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm')
EXAMPLE = 'options/realworld/train_ELAN_light_realesrnet_x4.yml'


def _registered(kind: str, name: Any) -> Optional[type]:
    from basicsr.utils import registry

    table = getattr(registry, f'{kind.upper()}_REGISTRY')
    for key in (name, f'{name}_basicsr'):
        if isinstance(key, str) and key in table:
            return table.get(key)
    return None


def realworld_stage(opt: Dict[str, Any]) -> Optional[str]:
    """'net' or 'gan' when ``model_type`` is (a subclass of) basicsr's ``RealESRNetModel`` / ``RealESRGANModel``,
    else ``None``."""
    from basicsr.models.realesrgan_model import RealESRGANModel
    from basicsr.models.realesrnet_model import RealESRNetModel

    cls = _registered('model', opt.get('model_type'))
    if cls is None:
        return None
    if issubclass(cls, RealESRGANModel):
        return 'gan'
    return 'net' if issubclass(cls, RealESRNetModel) else None


def _integer(opt: Dict[str, Any], key: str) -> int:
    value = opt.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != int(value) or value < 1:
        raise ElanError(f'option {key}: {value!r} must be a positive integer ({opt["model_type"]}\'s degradation '
                        f'reads it; see {EXAMPLE})')
    return int(value)


def degraded_batch(opt: Dict[str, Any]) -> int:
    """The batch one process's model degrades and queues: ``batch_size_per_gpu``, times ``num_gpu`` when
    DataParallel spreads one loader's batch over several GPUs (no launcher)."""
    batch = int(opt['datasets']['train']['batch_size_per_gpu'])
    gpus = opt.get('num_gpu') or 0
    return batch if opt.get('dist') or gpus <= 1 else batch * gpus


def check_realworld_options(opt: Dict[str, Any]) -> None:
    """Raise :class:`ElanError` naming the option if a real-world run could not start (module docstring).
    Other models pass untouched."""
    stage = realworld_stage(opt)
    if stage is None or not opt.get('high_order_degradation', True):
        return
    model = opt['model_type']
    missing = [key for key in DEGRADATION_KEYS + (GAN_KEYS if stage == 'gan' else NET_KEYS) if key not in opt]
    if missing:
        raise ElanError(f'{model} synthesises its training pairs from top-level options, and {", ".join(missing)} '
                        f'{"is" if len(missing) == 1 else "are"} missing; copy them from {EXAMPLE} (BasicSR\'s '
                        'recipe), or set high_order_degradation: false to train on paired data')
    _check_dataset(opt['datasets']['train'], model)
    scale, gt_size = _integer(opt, 'scale'), _integer(opt, 'gt_size')
    if gt_size % scale:
        raise ElanError(f'option gt_size: {gt_size} is not a multiple of scale {scale} (the LR patch is gt_size / '
                        f'scale); e.g. {gt_size // scale * scale or scale * 16}')
    if gt_size > DATASET_CROP:
        raise ElanError(f'option gt_size: {gt_size} is larger than the {DATASET_CROP}x{DATASET_CROP} crops '
                        f'RealESRGANDataset gives the model; use at most {DATASET_CROP // scale * scale}')
    discriminator = (opt.get('network_d') or {}).get('type') if stage == 'gan' else None
    if discriminator == 'UNetDiscriminatorSN' and gt_size % 8:
        raise ElanError(f'option gt_size: {gt_size} is not divisible by 8, which network_d UNetDiscriminatorSN needs '
                        f'(three 2x downsamplings joined by skip connections); e.g. {max(8, gt_size // 8 * 8)}')
    queue, batch = _integer(opt, 'queue_size') if 'queue_size' in opt else 180, degraded_batch(opt)
    if queue % batch:
        per = 'per process' if opt.get('dist') else ('over the GPUs' if (opt.get('num_gpu') or 0) > 1 else 'per step')
        raise ElanError(f'option queue_size: {queue} is not a multiple of the batch each training step degrades '
                        f'({batch} {per}: datasets:train:batch_size_per_gpu'
                        f'{" x num_gpu" if per == "over the GPUs" else ""}); e.g. queue_size: '
                        f'{max(batch, queue // batch * batch)}')


def _check_dataset(dataset: Dict[str, Any], model: str) -> None:
    from basicsr.data.realesrgan_dataset import RealESRGANDataset

    cls = _registered('dataset', dataset.get('type'))
    if cls is not None and not issubclass(cls, RealESRGANDataset):
        raise ElanError(f'datasets:train:type {dataset.get("type")} gives no blur kernels, which {model} degrades '
                        'with: use RealESRGANDataset on HR images (elan prepare realworld), or set '
                        'high_order_degradation: false to train on its pairs')
