"""ELAN in OpenVINO: ``elan export --format openvino`` writes an IR (``MODEL.xml`` + ``MODEL.bin``), and
:class:`OpenVinoNetwork` runs one on the CPU as a drop-in for the PyTorch network.

The IR is converted from the ONNX model of :func:`~elan_arch.deploy.onnx_export.export_onnx` (the runtime graph
of :mod:`~elan_arch.deploy.onnx_graph`: window gathers, rank <= 4), weights kept in float32; it inherits the
ONNX model's dynamic axes (or fixed shape) and its ``elan.*`` metadata (``rt_info['framework']``).
Converting the PyTorch module instead gives an IR as fast, more slowly (docs/deployment.md).

Precision: OpenVINO's CPU plugin runs float32 models in bfloat16 by default where the CPU has native
bfloat16 (AMX, and AVX512-BF16 too: seen on AMD Zen 4), which moves ELAN's outputs by several 8-bit
levels. :class:`OpenVinoNetwork` therefore sets ``INFERENCE_PRECISION_HINT`` to f32 unless asked for bf16.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from elan_arch.utils.errors import ElanError
from elan_arch.utils.extras import require
from elan_arch.utils.fileio import PathLike

#: ``INFERENCE_PRECISION_HINT`` values for :class:`OpenVinoNetwork`'s ``precision``.
PRECISIONS = {'float32': 'f32', 'bfloat16': 'bf16'}


def _openvino(feature: str):
    return require('openvino', 'openvino', feature)


def export_openvino(net: nn.Module, path: PathLike, config: Dict[str, Any], overwrite: bool = False,
                    check: bool = True, tolerance: Optional[float] = None,
                    shape: Optional[Tuple[int, int, int]] = None) -> 'OpenVinoExport':
    """Write ``net`` as an OpenVINO IR at ``path`` (``.xml``; the weights go to the ``.bin`` beside it).

    Via :func:`~elan_arch.deploy.onnx_export.export_onnx` (float32, dynamic axes or the fixed ``shape``), then
    ``ov.convert_model``; with ``check``, the IR is compiled in float32 and compared with PyTorch at the ONNX
    check's shapes (:func:`verify_openvino`). Both files are written to a temporary folder and moved into
    place, the ``.bin`` first, so an ``.xml`` is always complete.

    Raises:
        ElanError: ``path`` not ``.xml``, an existing file without ``overwrite``, a missing extra, or outputs
            that differ from PyTorch by more than ``tolerance`` (default: the ONNX float32 limit).
    """
    from elan_arch.deploy.onnx_export import TOLERANCE, VERIFY_SHAPES, export_onnx
    from elan_arch.utils.fileio import check_output_free

    ov = _openvino('elan export --format openvino')
    xml = Path(path)
    if xml.suffix.lower() != '.xml':
        raise ElanError(f'{xml}: an OpenVINO IR is written as MODEL.xml (weights in MODEL.bin beside it)')
    bin_path = xml.with_suffix('.bin')
    for target in (xml, bin_path):
        check_output_free(target, overwrite)
    limit = TOLERANCE[torch.float32] if tolerance is None else tolerance
    with tempfile.TemporaryDirectory(prefix='.elan-openvino-', dir=xml.parent if xml.parent.exists() else None) as tmp:
        onnx_path = Path(tmp) / 'model.onnx'
        exported = export_onnx(net, onnx_path, config, check=False, shape=shape)
        model = ov.convert_model(str(onnx_path))
        model.set_rt_info('openvino (converted from the ONNX export)', ['framework', 'elan.runtime'])
        staged = Path(tmp) / xml.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        diffs = verify_openvino(staged, net, [shape] if shape else VERIFY_SHAPES) if check else []
        if not all(d <= limit for _, d in diffs):
            raise ElanError(f'{xml}: the OpenVINO model disagrees with PyTorch: max |diff| '
                            f'{", ".join(f"{d:.3g} at {s}" for s, d in diffs)} (limit {limit:g}); nothing was written')
        xml.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged.with_suffix('.bin')), str(bin_path))
        shutil.move(str(staged), str(xml))
    return OpenVinoExport(xml, exported.metadata, diffs, limit)


class OpenVinoExport:
    """What :func:`export_openvino` wrote (``path``, the ``.xml``), its metadata and measured differences."""

    def __init__(self, path: Path, metadata: Dict[str, str], diffs: List[Tuple[Tuple[int, ...], float]],
                 tolerance: float) -> None:
        self.path, self.metadata, self.diffs, self.tolerance = path, metadata, diffs, tolerance

    def summary(self) -> str:
        checks = ', '.join(f'{d:.1e} at {"x".join(map(str, s))}' for s, d in self.diffs)
        return (f'{self.path} (+ {self.path.with_suffix(".bin").name}): {self.metadata["elan.variant"]} '
                f'x{self.metadata["elan.scale"]}, float32 IR; '
                + (f'OpenVINO (f32) vs PyTorch max |diff| {checks} (limit {self.tolerance:g})' if checks
                   else 'not checked'))


def verify_openvino(path: PathLike, net: nn.Module, shapes) -> List[Tuple[Tuple[int, ...], float]]:
    """Max |OpenVINO (float32) - PyTorch| of the IR at ``path`` against float32 ``net`` at each (batch, H, W)
    (smooth random images, as the ONNX check: :func:`~elan_arch.deploy.onnx_export.runtime_differences`)."""
    from elan_arch.deploy.onnx_export import runtime_differences

    return runtime_differences(OpenVinoNetwork(path), 'OpenVINO', path, net, shapes)


class OpenVinoNetwork:
    """An ``elan export --format openvino`` IR compiled for OpenVINO's CPU plugin.

    Args:
        path: The ``.xml`` (its ``.bin`` beside it).
        threads: ``INFERENCE_NUM_THREADS``; None: PyTorch's thread count, as the other runtimes.
        precision: ``float32`` (default; ``INFERENCE_PRECISION_HINT`` f32) or ``bfloat16`` (bf16, what
            OpenVINO itself picks on CPUs with native bfloat16).

    Attributes: ``upscale``, ``pad_multiple``, ``colors``, ``metadata`` (the model's ``elan.*`` entries),
    ``precision``; ``device``/``dtype`` are the CPU and float32 (inputs and outputs).
    Call: (B, colors, H, W) float32 in [0, 1] -> (B, colors, H*upscale, W*upscale).
    """

    device = torch.device('cpu')
    dtype = torch.float32

    def __init__(self, path: PathLike, threads: Optional[int] = None, precision: str = 'float32') -> None:
        from elan_arch.utils.fileio import model_path

        ov = _openvino('running an OpenVINO model')
        xml = model_path(str(path), '.xml', 'OpenVINO IR')
        if not xml.with_suffix('.bin').is_file():
            raise ElanError(f'{xml}: its weights {xml.with_suffix(".bin").name} are missing beside it')
        if precision not in PRECISIONS:
            raise ElanError(f'OpenVINO precision {precision!r}: choose {" or ".join(PRECISIONS)}')
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except RuntimeError as err:
            raise ElanError(f'{xml}: OpenVINO cannot read this model ({str(err).splitlines()[0]})') from err
        self.metadata = _metadata(model)
        if 'elan.scale' not in self.metadata:
            raise ElanError(f'{xml}: no ELAN metadata (elan.scale); models written by `elan export --format openvino` '
                            'have it')
        self.upscale = int(self.metadata['elan.scale'])
        self.pad_multiple = int(self.metadata.get('elan.pad_multiple', 16))
        self.colors = int(model.inputs[0].get_partial_shape()[1].get_length())
        self.precision = precision
        config = {'INFERENCE_PRECISION_HINT': PRECISIONS[precision], 'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_NUM_THREADS': int(threads or torch.get_num_threads())}
        self.compiled = core.compile_model(model, 'CPU', config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: Tensor) -> Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        out = self.request.infer({0: array})
        return torch.from_numpy(np.array(out[self.compiled.outputs[0]]))


def _metadata(model) -> Dict[str, str]:
    """The ``elan.*`` entries the ONNX model carried into the IR (``rt_info['framework']``)."""
    if not model.has_rt_info(['framework']):
        return {}
    keys = model.get_rt_info(['framework']).astype(dict)
    return {k: model.get_rt_info(['framework', k]).astype(str) for k in keys if k.startswith('elan.')}


def bench_build(precision: str):
    """A factory for ``elan bench --backends`` (:mod:`elan_arch.bench.backends`): the float32 network exported
    to an IR in the working folder (unchecked: the table compares the outputs) and run in ``precision``."""
    def build(net: nn.Module, workdir: Path, threads: int) -> OpenVinoNetwork:
        if precision == 'bfloat16':
            from elan_arch.utils.cpu_tuning import bf16_unsupported_reason

            reason = bf16_unsupported_reason()
            if reason:
                raise ElanError(f'unavailable: {reason}')
        path = workdir / 'elan.xml'
        export_openvino(net, path, {}, check=False)
        return OpenVinoNetwork(path, threads=threads, precision=precision)
    return build
