"""``ELANModel``: BasicSR's ``SRModel`` with an EMA that carries BatchNorm statistics, tiled and
self-ensemble testing, and optional mixed precision / ``torch.compile`` training."""
from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path
from elan_arch.models.eval_modes import self_ensemble, tiled_upscale
from elan_arch.models.tb_images import with_tb_images

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def ema_with_buffers(model_ema: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``BaseModel.model_ema`` (an EMA of ``net_g``'s parameters into ``net_g_ema``): afterwards every
    buffer of ``net_g`` (BatchNorm running statistics) is copied into ``net_g_ema`` too.

    basicsr 1.4.2 averages parameters only, so a network with BatchNorm (ELAN's GMSAs) validates and
    saves ``params_ema`` with the statistics it was built with (zeros and ones). ``ELANModel`` uses this;
    the ``basicsr`` command applies it to BasicSR's own models too (SRModel, SRGANModel, ESRGANModel, ...).
    """
    @functools.wraps(model_ema)
    def wrapper(self: Any, decay: float = 0.999) -> None:
        model_ema(self, decay)
        buffers = dict(self.get_bare_model(self.net_g).named_buffers())
        with torch.no_grad():
            for name, buffer in self.net_g_ema.named_buffers():
                buffer.copy_(buffers[name])

    return wrapper


def _amp_dtype(train_opt: Dict[str, Any]) -> Optional[torch.dtype]:
    amp = train_opt.get('amp')
    if amp in (None, False, 'none', 'no'):
        return None
    if amp not in AMP_DTYPES:
        raise ElanError(f'option train.amp: {amp!r} is not one of bf16, fp16 (or leave it out for float32)')
    return AMP_DTYPES[amp]


def _tile_options(val_opt: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    tile = val_opt.get('tile')
    if not tile:
        return None
    if not isinstance(tile, dict) or not isinstance(tile.get('size'), int) or tile['size'] < 1:
        raise ElanError(f'option val.tile: {tile!r} must be a mapping with size (LR pixels, a positive integer) '
                        'and optionally overlap, e.g. {size: 128, overlap: 16}; or ~ for whole images')
    overlap = tile.get('overlap', 0)
    if not isinstance(overlap, int) or not 0 <= overlap < tile['size']:
        raise ElanError(f'option val.tile.overlap: {overlap!r} must be an integer in [0, size={tile["size"]})')
    return tile['size'], overlap


@MODEL_REGISTRY.register()
class ELANModel(SRModel):
    """``SRModel`` (same options, same files) with the following differences.

    * EMA (``train.ema_decay > 0``): after each update the EMA network also receives the
      buffers of ``net_g`` (BatchNorm running statistics, which ELAN's GMSA uses). basicsr's
      ``model_ema`` averages parameters only, so ``net_g_ema`` and the saved ``params_ema``
      would keep their initial statistics and validate wrongly.
    * Validation / testing on whole images of any size (the network pads internally), with
      ``val.tile: {size: S, overlap: O}`` (in LR pixels; :func:`elan_arch.inference.upscale.upscale_array`,
      output clamped to [0, 1]) for images too large for memory and
      ``val.self_ensemble: true`` for the x8 flip/transpose ensemble.
    * ``val.tb_images: N``: the first N validation images' crops (bicubic | SR | GT) in TensorBoard at each
      validation (:mod:`elan_arch.models.tb_images`); off by default.
    * ``train.amp: bf16 | fp16``: forward pass under autocast (fp16 with a gradient scaler,
      whose state the training states carry as ``grad_scaler`` for resuming), loss in float32.
      ``train.compile: true`` (or a mapping of ``torch.compile`` arguments) compiles the training forward pass;
      validation and saving use the eager network.

    Images are (B, 3, H, W) RGB float in [0, 1]; outputs (B, 3, H*scale, W*scale).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        val_opt = opt.get('val') or {}
        self.tile = _tile_options(val_opt)
        self.ensemble = bool(val_opt.get('self_ensemble', False))
        super().__init__(opt)

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.amp_dtype = _amp_dtype(train_opt)
        super().init_training_settings()
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        compile_opt = train_opt.get('compile', False)
        if compile_opt:
            kwargs = compile_opt if isinstance(compile_opt, dict) else {}
            self.net_g_train: Callable[[Tensor], Tensor] = torch.compile(self.net_g, **kwargs)
        else:
            self.net_g_train = self.net_g

    # basicsr's parameter EMA, then every buffer of net_g copied into net_g_ema
    model_ema = ema_with_buffers(SRModel.model_ema)
    # BasicSR's validation, plus the first val.tb_images validation images in TensorBoard (elan_arch.models.tb_images)
    nondist_validation = with_tb_images(SRModel.nondist_validation)

    def compute_losses(self, output: Tensor) -> Tuple[Tensor, 'OrderedDict[str, Tensor]']:
        """Pixel and perceptual losses of ``output`` against ``self.gt`` as in ``SRModel``."""
        l_total = output.new_zeros(())
        loss_dict: OrderedDict[str, Tensor] = OrderedDict()
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, self.gt)
            loss_dict.update((name, value) for name, value in (('l_percep', l_percep), ('l_style', l_style))
                             if value is not None)
        for value in loss_dict.values():
            l_total = l_total + value
        return l_total, loss_dict

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            self.output = self.net_g_train(self.lq)
        self.output = self.output.float()
        l_total, loss_dict = self.compute_losses(self.output)
        self.grad_scaler.scale(l_total).backward()
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's ``<iter>.state`` (epoch, iter, optimizers, schedulers) plus ``grad_scaler`` with fp16
        AMP, written under a hidden temporary name and renamed (``--auto_resume`` never sees half a file).
        Rank 0 only; ``current_iter == -1`` (basicsr's "latest" at the end) saves nothing, as in BasicSR."""
        if current_iter == -1 or self.opt.get('rank', 0) != 0:
            return
        state: Dict[str, Any] = {'epoch': epoch, 'iter': current_iter,
                                 'optimizers': [o.state_dict() for o in self.optimizers],
                                 'schedulers': [s.state_dict() for s in self.schedulers]}
        if self.grad_scaler.is_enabled():
            state['grad_scaler'] = self.grad_scaler.state_dict()
        path = Path(self.opt['path']['training_states']) / f'{current_iter}.state'
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(state, tmp)

    def resume_training(self, resume_state: Dict[str, Any]) -> None:
        """Optimizers and schedulers as BasicSR, and the fp16 gradient scaler when the state has one."""
        super().resume_training(resume_state)
        if self.grad_scaler.is_enabled() and 'grad_scaler' in resume_state:
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])

    def inference_network(self) -> nn.Module:
        """The network validation and testing use: ``net_g_ema`` if EMA is on, else the bare ``net_g``."""
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def upscale(self, lq: Tensor) -> Tensor:
        """Super-resolve ``lq`` (B, 3, h, w) with :meth:`inference_network` in eval mode, honouring
        ``val.tile`` and ``val.self_ensemble``; (B, 3, h*scale, w*scale)."""
        net = self.inference_network()
        was_training = net.training
        net.eval()
        forward: Callable[[Tensor], Tensor] = net
        if self.tile is not None:
            forward = functools.partial(tiled_upscale, net, scale=self.opt['scale'], tile=self.tile[0],
                                        overlap=self.tile[1])
        try:
            with torch.no_grad():
                return self_ensemble(forward, lq) if self.ensemble else forward(lq)
        finally:
            net.train(was_training)

    def test(self) -> None:
        self.output = self.upscale(self.lq)
