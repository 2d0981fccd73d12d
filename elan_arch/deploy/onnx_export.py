"""ELAN to ONNX: any input size or one fixed shape, float32 or float16, checked against PyTorch with onnxruntime.

The exported graph is :class:`~elan_arch.deploy.onnx_graph.DeployELAN`: the whole network including
the padding and the crop, written in the operations runtimes run fast (window gathers instead of
rolls and rank-6 partitions, tensors of rank <= 4, BatchNorm folded, shared attention maps reused),
so the model takes any (batch, colors, H, W) RGB input in [0, 1] (H, W >= 1) and returns
(batch, colors, H*scale, W*scale), not clamped. Batch, height and width are dynamic axes, or, with
``shape``, fixed: then every shape computation (the padding's indices, the window orders) is a
constant and the graph holds only the network's arithmetic and gathers, as tile-based runtimes
(vs-mlrt, TensorRT engines, ncnn) like it.

Every export is simplified by onnxsim (constant folding, shape inference, duplicate removal),
then checked against the PyTorch network in float32.

Exporters: the TorchScript-based ``torch.onnx.export(dynamo=False)`` by default (PyTorch
deprecates it, but it exports ELAN-light in seconds), ``dynamo=True`` for the ``torch.export``-based
one, with a fixed shape only: with symbolic sizes it guards on the number of windows (whether there is
one) and fails.
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
from elan_arch.deploy.onnx_graph import DeployELAN
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
#: An input shape (batch, H, W).
Shape = Tuple[int, int, int]


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


def _in_dtype(net: ELAN, dtype: torch.dtype) -> ELAN:
    """A CPU copy of ``net`` in eval mode and ``dtype``, its BatchNorms in float32: they are folded into
    ``project_inp`` (in float32, then rounded once) rather than run."""
    net = copy.deepcopy(net).cpu().eval().to(dtype)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.float()
    return net


def model_metadata(net: ELAN, config: Dict[str, Any], dtype: torch.dtype, exporter: str, opset: int,
                   shape: Optional[Shape] = None) -> Dict[str, str]:
    """The ``metadata_props`` of an exported model (strings; read back by the onnxruntime backend).
    ``shape``: the fixed input (batch, H, W) of a fixed-shape export, None for dynamic axes."""
    colors, scale = net.head[0].in_channels, net.upscale
    kind = 'float16' if dtype == torch.float16 else 'float32'
    if shape is None:
        dims_in, dims_out = f'(batch, {colors}, H, W)', f'(batch, {colors}, H*{scale}, W*{scale})'
        size = 'any H, W >= 1'
    else:
        b, h, w = shape
        dims_in, dims_out = f'({b}, {colors}, {h}, {w})', f'({b}, {colors}, {h * scale}, {w * scale})'
        size = 'fixed shape'
    return {
        'elan.variant': variant_name(config),
        'elan.scale': str(scale),
        'elan.pad_multiple': str(net.pad_multiple),
        'elan.network_g': json.dumps(network_record(net)),  # as checkpoints record it (float32 net)
        'elan.dtype': kind,
        'elan.input': f'{INPUT_NAME}: {kind} {dims_in}, RGB in [0, 1], {size}',
        'elan.output': f'{OUTPUT_NAME}: {kind} {dims_out}, RGB in [0, 1] (not clamped)',
        'elan.shape': 'dynamic' if shape is None else f'{shape[0]}x{colors}x{shape[1]}x{shape[2]}',
        'elan.exporter': exporter,
        'elan.opset': str(opset),
    }


def _trace_to_file(model: nn.Module, example: Tensor, path: Path, opset: int, dynamo: bool, fixed: bool) -> None:
    """Write ``model`` traced on ``example`` to ``path`` with dynamic batch, height and width (``fixed``:
    the example's shape), then simplify it (:func:`simplify`)."""
    with warnings.catch_warnings(), torch.no_grad():
        # expected: the TorchScript exporter's deprecation notice, and tracer warnings about sizes
        # used as Python values (the graph is checked at untraced sizes afterwards)
        warnings.simplefilter('ignore', (DeprecationWarning, FutureWarning, torch.jit.TracerWarning, UserWarning))
        try:
            _export(model, example, path, opset, dynamo, fixed)
        except ElanError:
            raise
        except Exception as err:  # torch.onnx raises many types (unsupported opset, operator, ...)
            raise ElanError(f'ONNX export failed ({type(err).__name__}: {str(err).strip().splitlines()[0]})') from err


def _export(model: nn.Module, example: Tensor, path: Path, opset: int, dynamo: bool, fixed: bool) -> None:
    """One ``torch.onnx.export`` call with dynamic batch, height and width unless ``fixed``."""
    if dynamo:
        require('onnxscript', 'onnx', 'elan export --dynamo')
        dims = None if fixed else {'x': {
            0: torch.export.Dim('batch', min=1, max=1024), 2: torch.export.Dim('height', min=1, max=65536),
            3: torch.export.Dim('width', min=1, max=65536)}}
        program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=max(opset, 18),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=dims, verbose=False)
        program.save(str(path))
    else:
        axes = None if fixed else {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'},
                                   OUTPUT_NAME: {0: 'batch', 2: 'out_height', 3: 'out_width'}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)


def simplify(path: Path) -> None:
    """Rewrite the ONNX model at ``path`` simplified by onnxsim: constants folded (in a fixed-shape model all
    shape arithmetic, the padding's indices and the window orders), shapes inferred, duplicates merged.

    onnxsim (C++, a second onnxruntime check of each fold) was preferred to onnxslim (pure Python): on
    ELAN-light's dynamic graph it removed 2,470 of 3,775 nodes in 1.7 s against onnxslim's 1,780 in 17 s,
    and both gave the same fixed-shape graph (2026-12-06, AMD EPYC, 2 cores)."""
    onnx = require('onnx', 'onnx', 'elan export')
    onnxsim = require('onnxsim', 'onnx', 'elan export')
    model, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise ElanError(f'{path}: onnxsim could not check its simplified model against the original')
    onnx.save(model, str(path))


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

    return runtime_differences(OnnxNetwork(path), 'onnxruntime', path, net, shapes)


def runtime_differences(runtime, label: str, path: PathLike, net: ELAN,
                        shapes) -> List[Tuple[Tuple[int, ...], float]]:
    """Max |``runtime`` - PyTorch| against float32 ``net`` at each (batch, H, W) on :func:`smooth_images`;
    ``runtime`` is a loaded model with ``colors`` and ``dtype`` (``label`` and ``path`` name it in errors)."""
    reference = copy.deepcopy(net).float().eval()
    diffs = []
    for seed, (batch, h, w) in enumerate(shapes):
        x = smooth_images(batch, runtime.colors, h, w, seed)
        with torch.no_grad():
            expected = reference(x)
        got = runtime(x.to(runtime.dtype)).float()
        if got.shape != expected.shape:
            raise ElanError(f'{path}: {label} gave shape {tuple(got.shape)} for input {tuple(x.shape)}, '
                            f'PyTorch {tuple(expected.shape)}')
        diffs.append(((batch, runtime.colors, h, w), (got - expected).abs().max().item()))
    return diffs


def parse_shape(text: str, colors: int = 3) -> Shape:
    """``'1x3x256x256'`` (or ``'256x256'``) -> (batch, H, W); ElanError naming ``--shape`` otherwise."""
    try:
        dims = [int(v) for v in text.lower().split('x')]
    except ValueError:
        dims = []
    if len(dims) == 2:
        dims = [1, colors] + dims
    if len(dims) != 4 or min(dims) < 1 or dims[1] != colors:
        raise ElanError(f'--shape {text!r}: expected BATCHx{colors}xHEIGHTxWIDTH of positive sizes '
                        f'(e.g. 1x{colors}x256x256; the model has {colors} colour channels)')
    return dims[0], dims[2], dims[3]


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
                tolerance: Optional[float] = None, shape: Optional[Shape] = None) -> ExportResult:
    """Export ``net`` to ``path`` and check it with onnxruntime; nothing is written if the check fails.

    Args:
        net: The network (left unchanged; a copy is exported).
        path: The ``.onnx`` file, written atomically; an existing one is replaced only with ``overwrite``.
        config: Its ELAN keyword arguments (recorded in the metadata).
        half: Export in float16 (input and output float16 too).
        opset: ONNX opset.
        dynamo: Use the ``torch.export``-based exporter (opset >= 18; with a fixed ``shape`` only).
        check: Compare with PyTorch (:func:`verify_onnx`); only a benchmark of random weights,
            whose untrained attention is numerically meaningless, skips it.
        tolerance: Largest accepted max |ONNX - PyTorch|; default :data:`TOLERANCE` of the dtype.
        shape: A fixed input shape (batch, H, W) instead of dynamic axes; the check then runs at that shape.

    Raises:
        ElanError: the exported model disagrees with PyTorch beyond :data:`TOLERANCE`
            (the message gives the measured differences), or an extra is missing.
    """
    require('onnx', 'onnx', 'elan export')
    require('onnxruntime', 'onnx', 'elan export')
    if dynamo and shape is None:
        raise ElanError('--dynamo exports a fixed input shape only (give --shape or --tile): torch.export cannot keep '
                        'the runtime graph\'s window counts symbolic; the default exporter writes dynamic axes')
    dtype = torch.float16 if half else torch.float32
    model = DeployELAN(attention_in_float32(_in_dtype(net, dtype), dtype)).eval()
    colors = net.head[0].in_channels
    traced = shape or TRACE_SHAPE
    example = torch.rand(traced[0], colors, *traced[1:], generator=torch.Generator().manual_seed(0))
    metadata = model_metadata(net, config, dtype, 'torch.export (dynamo)' if dynamo else 'TorchScript',
                              max(opset, 18) if dynamo else opset, shape)
    with atomic_path(path, overwrite=overwrite) as tmp:
        _trace_to_file(model, example.to(dtype), tmp, opset, dynamo, fixed=shape is not None)
        simplify(tmp)
        _add_metadata(tmp, metadata)
        limit = TOLERANCE[dtype] if tolerance is None else tolerance
        checked = verify_onnx(tmp, net, [shape] if shape else VERIFY_SHAPES) if check else []
        result = ExportResult(Path(path), metadata, checked, limit)
        if not all(d <= result.tolerance for _, d in result.diffs):  # also catches NaN
            raise ElanError(f'{path}: the exported model disagrees with PyTorch: max |diff| '
                            f'{", ".join(f"{d:.3g} at {s}" for s, d in result.diffs)} (limit {result.tolerance:g}); '
                            'nothing was written')
    return result
