"""ELAN to ONNX: any input size, float32 or float16, checked against PyTorch with onnxruntime.

The exported graph is :class:`ExportableELAN`: the whole network including the padding
and the crop, so the model takes any (batch, colors, H, W) RGB input in [0, 1] (H, W >= 1)
and returns (batch, colors, H*scale, W*scale), not clamped. Batch, height and width are
dynamic axes.

Differences from :meth:`ELAN.forward`, none of which changes the function:

* Padding is a gather with reflected indices computed from the input's shape in the
  graph (periodic reflection, which is what :func:`~elan_arch.archs.elan_arch.pad_to_multiple`'s
  repeated reflections give), instead of a Python loop over shapes that a trace would freeze.
* The module tree's reference arithmetic (no ``channels_last``/fused-attention fast path).
* Attention (logits, softmax, maps times values) in float32 even in a float16 model
  (:func:`attention_in_float32`): ELAN's logits are unscaled and overflow float16.

Exporters: the TorchScript-based ``torch.onnx.export(dynamo=False)`` by default (PyTorch
deprecates it, but it exports ELAN-light in seconds where the ``torch.export``-based one
needs about a minute, spent on symbolic shapes), ``dynamo=True`` for the latter.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elan_arch.archs.elan_arch import ELAN
from elan_arch.deploy.checkpoint import network_record, variant_name
from elan_arch.utils.errors import ElanError
from elan_arch.utils.extras import require
from elan_arch.utils.fileio import PathLike, atomic_path

#: ONNX opset of exported models (the TorchScript exporter; ``dynamo=True`` needs >= 18).
OPSET = 17
#: Input shape (batch, H, W) the graph is traced with (padded on both axes).
TRACE_SHAPE = (1, 9, 5)
#: Shapes (batch, H, W) of the onnxruntime check: neither is traced, both need padding, one is odd
#: (small, because full ELAN costs about 16 MFLOPs per padded input pixel).
VERIFY_SHAPES = ((1, 19, 13), (2, 9, 16))
#: Largest max |ONNX - PyTorch| accepted by the check, per exported dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}
INPUT_NAME, OUTPUT_NAME = 'input', 'output'


def reflect_indices(size: int, target: int) -> Tensor:
    """Indices 0..target-1 reflected into [0, size): 0, 1, .., size-1, size-2, .., 1, 0, 1, ..

    ``size`` and ``target`` come from an input's shape, which the exporters trace (TorchScript:
    as 0-dim tensors, torch.export: as symbolic ints), so the graph computes them for every size.
    ``size == 1`` repeats index 0.
    """
    i = torch.arange(target)
    period = i.new_full((), 2 * size - 2).clamp(min=1)
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - i, i)


class _Cast(nn.Module):
    """Casts its input to ``dtype`` (a ``Cast`` node in the graph). Shape unchanged."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return x.to(self.dtype)


def attention_in_float32(net: ELAN, dtype: torch.dtype) -> ELAN:
    """``net`` (already in ``dtype``) with every GMSA's attention computed in float32.

    The outputs of each ``project_inp`` (queries and values) are cast to float32, so logits,
    softmax, the shared maps and ``maps @ V`` are float32, and ``project_out``'s input is cast
    back to ``dtype``. The GMSA modules' own forward then does the rest. Returns ``net``.
    """
    for block in net.body:
        for gmsa in block.modules_gmsa.values():
            gmsa.project_inp.append(_Cast(torch.float32))
            gmsa.project_out = nn.Sequential(_Cast(dtype), gmsa.project_out)
    return net


class ExportableELAN(nn.Module):
    """The graph :func:`export_onnx` writes: ``net`` with in-graph padding and crop.

    Shape: (B, colors, H, W) in [0, 1], any H, W >= 1 -> (B, colors, H*scale, W*scale).
    """

    def __init__(self, net: ELAN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        h, w = x.shape[2], x.shape[3]
        m = net.pad_multiple
        x = x.index_select(2, reflect_indices(h, (h + m - 1) // m * m))
        x = x.index_select(3, reflect_indices(w, (w + m - 1) // m * m))
        feat = net.head(net.sub_mean(x * net.img_range))
        y = net.add_mean(net.tail(net.body(feat) + feat)) / net.img_range
        return y[:, :, :h * net.upscale, :w * net.upscale]


def model_metadata(net: ELAN, config: Dict[str, Any], dtype: torch.dtype, exporter: str, opset: int) -> Dict[str, str]:
    """The ``metadata_props`` of an exported model (strings; read back by the onnxruntime backend)."""
    colors, scale = net.head[0].in_channels, net.upscale
    kind = 'float16' if dtype == torch.float16 else 'float32'
    return {
        'elan.variant': variant_name(config),
        'elan.scale': str(scale),
        'elan.pad_multiple': str(net.pad_multiple),
        'elan.network_g': json.dumps(network_record(net)),  # as checkpoints record it (float32 net)
        'elan.dtype': kind,
        'elan.input': f'{INPUT_NAME}: {kind} (batch, {colors}, H, W), RGB in [0, 1], any H, W >= 1',
        'elan.output': f'{OUTPUT_NAME}: {kind} (batch, {colors}, H*{scale}, W*{scale}), RGB in [0, 1] (not clamped)',
        'elan.exporter': exporter,
        'elan.opset': str(opset),
    }


def _trace_to_file(model: nn.Module, example: Tensor, path: Path, opset: int, dynamo: bool) -> None:
    """Write ``model`` traced on ``example`` to ``path`` with dynamic batch, height and width."""
    with warnings.catch_warnings(), torch.no_grad():
        # expected: the TorchScript exporter's deprecation notice, and tracer warnings about sizes
        # used as Python values (the graph is checked at untraced sizes afterwards)
        warnings.simplefilter('ignore', (DeprecationWarning, FutureWarning, torch.jit.TracerWarning, UserWarning))
        try:
            _export(model, example, path, opset, dynamo)
        except ElanError:
            raise
        except Exception as err:  # torch.onnx raises many types (unsupported opset, operator, ...)
            raise ElanError(f'ONNX export failed ({type(err).__name__}: {str(err).strip().splitlines()[0]})') from err


def _export(model: nn.Module, example: Tensor, path: Path, opset: int, dynamo: bool) -> None:
    """One ``torch.onnx.export`` call with dynamic batch, height and width (see :func:`_trace_to_file`)."""
    if dynamo:
        require('onnxscript', 'onnx', 'elan export --dynamo')
        dims = {0: torch.export.Dim('batch', min=1, max=1024), 2: torch.export.Dim('height', min=1, max=65536),
                3: torch.export.Dim('width', min=1, max=65536)}
        program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=max(opset, 18),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={'x': dims}, verbose=False)
        program.save(str(path))
    else:
        axes = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'},
                OUTPUT_NAME: {0: 'batch', 2: 'out_height', 3: 'out_width'}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)


def _add_metadata(path: Path, metadata: Dict[str, str]) -> None:
    onnx = require('onnx', 'onnx', 'elan export')
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = f'{metadata["elan.variant"]} x{metadata["elan.scale"]} super-resolution (elan-arch export). ' \
        f'{metadata["elan.input"]} -> {metadata["elan.output"]}.'
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def smooth_images(batch: int, colors: int, h: int, w: int, seed: int) -> Tensor:
    """(batch, colors, h, w) random images in [0, 1] with photo-like smoothness: bilinearly upsampled
    noise (white noise is far from anything an SR network is trained on)."""
    coarse = torch.rand(batch, colors, h // 4 + 2, w // 4 + 2, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)


def verify_onnx(path: PathLike, net: ELAN, shapes=VERIFY_SHAPES) -> List[Tuple[Tuple[int, ...], float]]:
    """Max |onnxruntime - PyTorch| of the model at ``path`` against float32 ``net`` at each (batch, H, W).

    Inputs are :func:`smooth_images`; the ONNX model runs on the CPU in its own dtype.
    """
    from elan_arch.deploy.onnx_runtime import OnnxNetwork

    runtime = OnnxNetwork(path)
    reference = copy.deepcopy(net).float().eval()
    diffs = []
    for seed, (batch, h, w) in enumerate(shapes):
        x = smooth_images(batch, runtime.colors, h, w, seed)
        with torch.no_grad():
            expected = reference(x)
        got = runtime(x.to(runtime.dtype)).float()
        if got.shape != expected.shape:
            raise ElanError(f'{path}: onnxruntime gave shape {tuple(got.shape)} for input {tuple(x.shape)}, '
                            f'PyTorch {tuple(expected.shape)}')
        diffs.append(((batch, runtime.colors, h, w), (got - expected).abs().max().item()))
    return diffs


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""
    path: Path
    metadata: Dict[str, str]
    diffs: List[Tuple[Tuple[int, ...], float]]
    tolerance: float

    def summary(self) -> str:
        checks = ', '.join(f'{d:.1e} at {"x".join(map(str, s))}' for s, d in self.diffs)
        return (f'{self.path}: {self.metadata["elan.variant"]} x{self.metadata["elan.scale"]}, '
                f'{self.metadata["elan.dtype"]}, opset {self.metadata["elan.opset"]}; '
                + (f'onnxruntime vs PyTorch max |diff| {checks} (limit {self.tolerance:g})' if checks
                   else 'not checked'))


def export_onnx(net: ELAN, path: PathLike, config: Dict[str, Any], half: bool = False, opset: int = OPSET,
                dynamo: bool = False, overwrite: bool = False, check: bool = True,
                tolerance: Optional[float] = None) -> ExportResult:
    """Export ``net`` to ``path`` and check it with onnxruntime; nothing is written if the check fails.

    Args:
        net: The network (left unchanged; a copy is exported).
        path: The ``.onnx`` file, written atomically; an existing one is replaced only with ``overwrite``.
        config: Its ELAN keyword arguments (recorded in the metadata).
        half: Export in float16 (input and output float16 too).
        opset: ONNX opset.
        dynamo: Use the ``torch.export``-based exporter (opset >= 18).
        check: Compare with PyTorch (:func:`verify_onnx`); only a benchmark of random weights,
            whose untrained attention is numerically meaningless, skips it.
        tolerance: Largest accepted max |ONNX - PyTorch|; default :data:`TOLERANCE` of the dtype.

    Raises:
        ElanError: the exported model disagrees with PyTorch beyond :data:`TOLERANCE`
            (the message gives the measured differences), or an extra is missing.
    """
    require('onnx', 'onnx', 'elan export')
    require('onnxruntime', 'onnx', 'elan export')
    dtype = torch.float16 if half else torch.float32
    model = ExportableELAN(attention_in_float32(copy.deepcopy(net).cpu().eval().to(dtype), dtype)).eval()
    colors = net.head[0].in_channels
    example = torch.rand(TRACE_SHAPE[0], colors, *TRACE_SHAPE[1:], generator=torch.Generator().manual_seed(0))
    metadata = model_metadata(net, config, dtype, 'torch.export (dynamo)' if dynamo else 'TorchScript',
                              max(opset, 18) if dynamo else opset)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _trace_to_file(model, example.to(dtype), tmp, opset, dynamo)
        _add_metadata(tmp, metadata)
        limit = TOLERANCE[dtype] if tolerance is None else tolerance
        result = ExportResult(Path(path), metadata, verify_onnx(tmp, net) if check else [], limit)
        if not all(d <= result.tolerance for _, d in result.diffs):  # also catches NaN
            raise ElanError(f'{path}: the exported model disagrees with PyTorch: max |diff| '
                            f'{", ".join(f"{d:.3g} at {s}" for s, d in result.diffs)} (limit {result.tolerance:g}); '
                            'nothing was written')
    return result
