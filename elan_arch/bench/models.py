"""The models ``elan bench`` compares: ELAN (fast path, reference arithmetic, fused attention, onnxruntime),
the paper's ablation variants of ELAN-light (``--ablation``), BasicSR's SwinIR-light and the EDSR baseline,
freshly initialised (speed does not depend on the weights)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor, nn

from elan_arch.archs.elan_arch import ELAN_ABLATIONS
from elan_arch.archs.elan_blocks import pad_to_multiple
from elan_arch.utils.errors import ElanError

#: ``--models`` keys -> table names; the order is the table's.
MODELS: Dict[str, str] = {
    'elan-light': 'ELAN-light',
    'elan-light-ref': 'ELAN-light (reference path)',
    'elan': 'ELAN',
    'elan-ref': 'ELAN (reference path)',
    'elan-light-fused': 'ELAN-light (fused attention)',
    'elan-fused': 'ELAN (fused attention)',
    'elan-light-onnx': 'ELAN-light (onnxruntime)',
    'swinir-light': 'SwinIR-light',
    'edsr': 'EDSR-baseline',
}
#: The ablation variants of ELAN-light (:data:`~elan_arch.archs.elan_arch.ELAN_ABLATIONS`): ``--models`` key ->
#: ablation name. Each runs on the reference arithmetic (the one every variant has), so that they compare
#: with ``elan-light-ref`` like for like.
ABLATION_KEYS: Dict[str, str] = {f'elan-light-{name.replace("_", "-")}': name for name in ELAN_ABLATIONS}
MODELS.update({key: f'ELAN-light {name} ({", ".join(f"{k}: {v}" for k, v in ELAN_ABLATIONS[name].items())})'
               for key, name in ABLATION_KEYS.items()})
BASELINE = 'swinir-light'
#: Measured only when named in ``--models``: the ONNX export needs an extra (``pip install -e '.[onnx]'`` in a clone),
#: ELAN's reference arithmetic is slow to wait for, the fused attention kernels need CUDA (``ELAN.fused_attention``),
#: the ablation variants are ``--ablation``'s.
OPTIONAL_MODELS = ('elan-light-onnx', 'elan-ref', 'elan-light-fused', 'elan-fused', *ABLATION_KEYS)
#: ``--ablation``'s models, in the table's order: the anchor, ELAN-light on both paths, then every variant.
ABLATION_MODELS = ['swinir-light', 'elan-light', 'elan-light-ref', *ABLATION_KEYS]
#: The row ``--ablation``'s second speed-up column compares with (the same arithmetic as the variants).
ABLATION_REFERENCE = 'elan-light-ref'
#: ``--train``'s default models.
TRAIN_MODELS = ['elan-light', 'elan-light-ref', 'elan', 'elan-ref', 'swinir-light']


def build_model(key: str, scale: int) -> nn.Module:
    """A freshly initialised model for a :data:`MODELS` key, in eval mode.

    BasicSR's SwinIR needs sizes that are multiples of its window (8); it is wrapped to
    reflect-pad and crop, as SwinIR's own test script does.
    """
    from basicsr.archs.edsr_arch import EDSR
    from basicsr.archs.swinir_arch import SwinIR

    from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS

    if key == 'elan-light-onnx':
        net = OnnxRuntimeModule(ELAN(upscale=scale, **ELAN_VARIANTS['ELAN-light']).eval())
    elif key in ABLATION_KEYS:
        net = ELAN(upscale=scale, **{**ELAN_VARIANTS['ELAN-light'], **ELAN_ABLATIONS[ABLATION_KEYS[key]]})
        net.fast_inference = net.fast_training = False
    elif key.startswith('elan'):
        net = ELAN(upscale=scale, **ELAN_VARIANTS['ELAN-light' if key.startswith('elan-light') else 'ELAN'])
        net.fast_inference = net.fast_training = not key.endswith('-ref')
        net.fused_attention = key.endswith('-fused')
    elif key == 'swinir-light':
        net = PadToMultiple(SwinIR(upscale=scale, in_chans=3, img_size=64, window_size=8, img_range=1.,
                                   depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2,
                                   upsampler='pixelshuffledirect', resi_connection='1conv'), multiple=8, scale=scale)
    else:
        net = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=scale, res_scale=1)
    return net.eval()


class PadToMultiple(nn.Module):
    """Reflect-pad the input to a multiple of ``multiple``, run ``net``, crop its output.

    In float16/bfloat16 ``net`` runs under autocast: BasicSR's SwinIR builds its shifted-window
    attention mask in float32, so with half weights ``attn + mask`` turns float32 and the next
    matrix product fails on mixed dtypes; autocast runs such products in the half dtype.

    Shape: (B, C, H, W) -> (B, C, H*scale, W*scale).
    """

    def __init__(self, net: nn.Module, multiple: int, scale: int) -> None:
        super().__init__()
        self.net, self.multiple, self.scale = net, multiple, scale

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        half = x.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast(x.device.type, dtype=x.dtype, enabled=half):
            y = self.net(pad_to_multiple(x, self.multiple))
        return y[..., :h * self.scale, :w * self.scale].to(x.dtype)


class OnnxRuntimeModule(nn.Module):
    """``net`` exported to ONNX (in a temporary folder) and run by onnxruntime on the CPU, as a module.

    For ``elan bench``: ``net`` stays a submodule, so its parameters are counted, but FLOPs are
    not (the work happens outside PyTorch). onnxruntime gets ``torch.get_num_threads()`` threads,
    like PyTorch. The export is not checked (benchmark weights are random).

    Shape: float32 CPU (B, C, H, W) -> (B, C, H*scale, W*scale).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from elan_arch.deploy.onnx_export import export_onnx
        from elan_arch.deploy.onnx_runtime import OnnxNetwork

        self.net = net
        with tempfile.TemporaryDirectory() as tmp:  # the session keeps the model in memory
            export_onnx(net, Path(tmp) / 'model.onnx', {}, check=False)
            self.runtime = OnnxNetwork(Path(tmp) / 'model.onnx', threads=torch.get_num_threads())

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            raise ElanError('the onnxruntime model runs float32 on the CPU: drop --half/--device cuda, or the '
                            '*-onnx model from --models')
        return self.runtime(x)
