"""BasicSR's real-world models (Real-ESRNet, Real-ESRGAN) on any device, with a resumable degradation.

basicsr 1.4.2's ``RealESRNetModel`` and ``RealESRGANModel`` synthesise their low-resolution inputs on the
device (second-order degradation: blur, resize, noise, JPEG, twice; a training-pair queue) but only on
CUDA: ``__init__`` calls ``DiffJPEG(...).cuda()`` and ``USMSharp().cuda()``, ``_dequeue_and_enqueue``
allocates the queue with ``.cuda()``, and on the CPU ``filter2D`` fails on DiffJPEG's channels-last
output ("view size is not compatible with input tensor's size and stride"). This module keeps their
degradation arithmetic and changes only where it runs and what a checkpoint holds:

* :func:`device_neutral_init`: the JPEG simulator and the USM sharpener on ``model.device``;
* :func:`queue_on_device`: the queue allocated on ``model.device`` (then basicsr's own queue code);
* :func:`contiguous_filter2D`: basicsr's ``filter2D`` on a contiguous copy of a channels-last input
  (the same values: only the memory layout differs);
* :func:`degraded_feed_data`: the degradation draws from its own random stream
  (:class:`~elan_arch.models.realworld_state.DegradationStream`), which a training state saves with the
  queue (:func:`save_training_state`, :func:`resume_training`): ``--auto_resume`` continues the same
  degradations and queue.

:func:`fix_basicsr_models` installs these into basicsr's two classes (the ``basicsr`` command does, via
:mod:`elan_arch.training.basicsr_fixes`), so BasicSR's own option files (``model_type: RealESRNetModel``)
work with any generator on CPU and CUDA. :class:`RealELANNetModel` and :class:`RealELANGANModel` are the same
models under this package's names (as HAT's ``RealHATGANModel``); they carry the fixes themselves.
"""
from __future__ import annotations

from os import path as osp
from typing import Any, Callable, Dict

import torch
from torch import Tensor

import basicsr.models.realesrgan_model as realesrgan_module
import basicsr.models.realesrnet_model as realesrnet_module
import basicsr.utils.img_process_util as img_process_util
from basicsr.models.base_model import BaseModel
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.models.realesrnet_model import RealESRNetModel
from basicsr.utils import DiffJPEG, USMSharp
from basicsr.utils.registry import MODEL_REGISTRY

from elan_arch.models import realworld_state
from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path

BASICSR_REAL_MODELS = (RealESRNetModel, RealESRGANModel)
# basicsr's own methods, kept before anything replaces them (the reference of the tests, and what the fixes call)
BASICSR_METHODS: Dict[type, Dict[str, Callable]] = {
    cls: {name: cls.__dict__[name] for name in ('__init__', '_dequeue_and_enqueue', 'feed_data')}
    for cls in BASICSR_REAL_MODELS}
BASICSR_FILTER2D = img_process_util.filter2D
_FILTER_MODULES = (img_process_util, realesrnet_module, realesrgan_module)


def contiguous_filter2D(img: Tensor, kernel: Tensor) -> Tensor:
    """basicsr's ``filter2D`` (``img`` (b, c, h, w), ``kernel`` (1 or b, k, k)) on ``img.contiguous()``.

    basicsr reshapes the padded image with ``.view()``, which fails for channels-last strides (DiffJPEG's
    output on the CPU, and what ``F.interpolate`` makes of it); a contiguous copy holds the same values, so
    the result is basicsr's. Inputs that are already contiguous are passed as they are.
    """
    return BASICSR_FILTER2D(img.contiguous(), kernel)


def install_contiguous_filter2D() -> None:
    """Make ``filter2D`` of basicsr's ``img_process_util`` (used by ``USMSharp``) and of the two real-world
    model modules :func:`contiguous_filter2D` (idempotent; no change where basicsr's worked)."""
    for module in _FILTER_MODULES:
        module.filter2D = contiguous_filter2D


def _basicsr_class(model: Any) -> type:
    """The basicsr real-world class ``model`` is (or derives from)."""
    for cls in type(model).__mro__:
        if cls in BASICSR_REAL_MODELS:
            return cls
    raise TypeError(f'{type(model).__name__} is not a RealESRNetModel or RealESRGANModel')


def device_neutral_init(self: Any, opt: Dict[str, Any]) -> None:
    """Replacement of ``RealESRNetModel.__init__`` / ``RealESRGANModel.__init__``: the parent's
    (``SRModel`` / ``SRGANModel``: networks, losses, optimizers), then basicsr's three attributes with the
    JPEG simulator and the sharpener on ``self.device`` (basicsr: ``.cuda()``)."""
    install_contiguous_filter2D()
    super(_basicsr_class(self), self).__init__(opt)
    self.jpeger = DiffJPEG(differentiable=False).to(self.device)  # simulate JPEG compression artifacts
    self.usm_sharpener = USMSharp().to(self.device)
    self.queue_size = opt.get('queue_size', 180)
    self.degradation_stream = realworld_state.DegradationStream()


def queue_on_device(self: Any) -> None:
    """Replacement of ``_dequeue_and_enqueue``: the first call allocates the training-pair queue on
    ``self.device`` (basicsr: ``torch.zeros(...).cuda()``); the queue itself is basicsr's code. A queue
    restored from a state that the current batch cannot fill exactly (the batch changed) restarts empty."""
    b, c, h, w = self.lq.size()
    if hasattr(self, 'queue_lr') and not realworld_state.fits_batch(self, b):
        realworld_state.warn(f'the restored training-pair queue holds {self.queue_ptr} of {self.queue_size} pairs, '
                             f'which batches of {b} cannot fill exactly: it refills from empty')
        del self.queue_lr, self.queue_gt
    if not hasattr(self, 'queue_lr'):
        if self.queue_size % b:
            raise ElanError(f'option queue_size: {self.queue_size} is not a multiple of the batch of {b} pairs '
                            'each process degrades; make it one (e.g. '
                            f'{max(b, self.queue_size // b * b)})')
        self.queue_lr = torch.zeros(self.queue_size, c, h, w, device=self.device)
        self.queue_gt = torch.zeros(self.queue_size, *self.gt.shape[1:], device=self.device)
        self.queue_ptr = 0
    BASICSR_METHODS[_basicsr_class(self)]['_dequeue_and_enqueue'](self)


def degraded_feed_data(self: Any, data: Dict[str, Any]) -> None:
    """Replacement of ``feed_data``: basicsr's, with the training degradation drawing from the model's
    :class:`~elan_arch.models.realworld_state.DegradationStream` (validation and paired data unchanged)."""
    feed_data = BASICSR_METHODS[_basicsr_class(self)]['feed_data']
    if self.is_train and self.opt.get('high_order_degradation', True):
        stream = getattr(self, 'degradation_stream', None)
        if stream is None:
            stream = self.degradation_stream = realworld_state.DegradationStream()
        with stream.active(self.device):
            feed_data(self, data)
    else:
        feed_data(self, data)


def save_training_state(self: Any, epoch: int, current_iter: int) -> None:
    """Replacement of ``save_training_state`` for the real-world models: basicsr's state (epoch, iteration,
    optimizers, schedulers) plus ``realworld``, every process's queue and degradation stream
    (:func:`~elan_arch.models.realworld_state.gathered_states`; every rank calls this, rank 0 writes).
    Written to a temporary file and renamed into place; a failed write stops the run with :class:`ElanError`
    (basicsr only warns and goes on without the state)."""
    entries = realworld_state.gathered_states(self)
    if self.opt.get('rank', 0) != 0 or current_iter == -1:
        return
    state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
             'schedulers': [s.state_dict() for s in self.schedulers], 'realworld': entries}
    final = osp.join(self.opt['path']['training_states'], f'{current_iter}.state')
    try:
        with atomic_path(final, overwrite=True) as tmp:
            torch.save(state, tmp)
    except OSError as err:
        raise ElanError(f'could not write {final} ({err.strerror or err}); is the disk full? The previous checkpoint '
                        'is intact: make room and continue with --auto_resume') from err


def resume_training(self: Any, resume_state: Dict[str, Any]) -> None:
    """``BaseModel.resume_training`` (optimizers, schedulers), then this process's queue and degradation
    stream from ``resume_state['realworld']`` (:func:`~elan_arch.models.realworld_state.restore`)."""
    BaseModel.resume_training(self, resume_state)
    realworld_state.restore(self, resume_state.get('realworld'))


FIXED_METHODS: Dict[str, Callable] = {
    '__init__': device_neutral_init, '_dequeue_and_enqueue': queue_on_device, 'feed_data': degraded_feed_data,
    'save_training_state': save_training_state, 'resume_training': resume_training}


def fix_basicsr_models() -> None:
    """Install :data:`FIXED_METHODS` into basicsr's ``RealESRNetModel`` and ``RealESRGANModel``, and
    :func:`contiguous_filter2D` (idempotent)."""
    install_contiguous_filter2D()
    for cls in BASICSR_REAL_MODELS:
        for name, method in FIXED_METHODS.items():
            setattr(cls, name, method)


@MODEL_REGISTRY.register()
class RealELANNetModel(RealESRNetModel):
    """BasicSR's ``RealESRNetModel`` (L1 on USM-sharpened targets, degradations synthesised on the device)
    for any ``network_g``, on CPU and CUDA, resumable with its queue and random stream."""

    __init__ = device_neutral_init
    _dequeue_and_enqueue = queue_on_device
    feed_data = degraded_feed_data
    save_training_state = save_training_state
    resume_training = resume_training


@MODEL_REGISTRY.register()
class RealELANGANModel(RealESRGANModel):
    """BasicSR's ``RealESRGANModel`` (``network_d``, perceptual and GAN losses on the degraded inputs of
    :class:`RealELANNetModel`) for any ``network_g``, on CPU and CUDA, resumable with its queue and stream."""

    __init__ = device_neutral_init
    _dequeue_and_enqueue = queue_on_device
    feed_data = degraded_feed_data
    save_training_state = save_training_state
    resume_training = resume_training
