"""``elan bench --backends``: one ELAN run by every runtime, in one interleaved run.

Each runtime is a :class:`BackendSpec` in :data:`BACKENDS`: a factory that turns a float32 PyTorch ELAN
into the callable the runtime runs (exporting it into a working folder first where the runtime needs a
file), the Python packages it needs and the pip line that installs them. A runtime whose packages are
missing is reported as unavailable with that line; one that fails to build or run gets its error in its
row. A new runtime is one more :func:`register_backend` call.

Every backend is timed round-robin with SwinIR-light in PyTorch float32 (the speed-up anchor), on the same
real photo, and its output is compared with PyTorch float32's in 8-bit levels (both rounded to 0..255).
The network's BatchNorm statistics are measured on that photo first, as training leaves them: with an
untrained network's statistics ELAN's unscaled attention logits are huge and float32 rounding alone moves
its output, so differences would say nothing about the runtimes.
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from elan_arch.deploy import openvino_runtime

#: (float32 ELAN in eval mode, working folder, threads) -> callable on (1, C, H, W) float32 CPU tensors.
Factory = Callable[[nn.Module, Path, int], Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class BackendSpec:
    """A runtime of the table: its row name, its factory, the Python packages (import names) it needs
    and the pip line that installs them."""
    label: str
    build: Factory
    packages: Tuple[str, ...] = ()
    pip: str = ''

    def missing(self) -> List[str]:
        """The needed packages that are not installed."""
        return [name for name in self.packages if importlib.util.find_spec(name) is None]


#: ``--backends`` names -> runtimes, in the table's order.
BACKENDS: Dict[str, BackendSpec] = {}


def register_backend(name: str, spec: BackendSpec) -> None:
    """Add (or replace) the runtime ``name`` of ``--backends``."""
    BACKENDS[name] = spec


def _torch(dtype: torch.dtype) -> Factory:
    def build(net: nn.Module, workdir: Path, threads: int) -> Callable[[Tensor], Tensor]:
        from elan_arch.inference.backends import torch_backend

        backend = torch_backend(copy.deepcopy(net), torch.device('cpu'), dtype)
        return lambda x: backend.net(x.to(dtype)).float()
    return build


def _bf16(net: nn.Module, workdir: Path, threads: int) -> Callable[[Tensor], Tensor]:
    from elan_arch.utils.cpu_tuning import bf16_unsupported_reason
    from elan_arch.utils.errors import ElanError

    reason = bf16_unsupported_reason()
    if reason:
        raise ElanError(f'unavailable: {reason}')
    return _torch(torch.bfloat16)(net, workdir, threads)


def _onnxruntime(net: nn.Module, workdir: Path, threads: int) -> Callable[[Tensor], Tensor]:
    from elan_arch.deploy.onnx_export import export_onnx
    from elan_arch.deploy.onnx_runtime import OnnxNetwork

    path = workdir / 'elan.onnx'
    export_onnx(net, path, {}, check=False)  # the default `elan export` (the table checks the outputs)
    return OnnxNetwork(path, threads=threads)


register_backend('torch', BackendSpec('PyTorch float32 (fast path)', _torch(torch.float32)))
register_backend('torch-bf16', BackendSpec('PyTorch bfloat16', _bf16))
register_backend('onnxruntime', BackendSpec('onnxruntime (elan export, dynamic axes)', _onnxruntime,
                                            ('onnx', 'onnxruntime', 'onnxsim'), "pip install -e '.[onnx]'"))
for _name, _precision in (('openvino', 'float32'), ('openvino-bf16', 'bfloat16')):
    register_backend(_name, BackendSpec(f'OpenVINO {_precision} (elan export --format openvino)',
                                        openvino_runtime.bench_build(_precision),
                                        ('onnx', 'onnxruntime', 'onnxsim', 'openvino'), "pip install -e '.[openvino]'"))


@dataclass
class BackendResult:
    """One row: latencies (s), output difference to PyTorch float32 in 8-bit levels, or why it did not run."""
    name: str
    label: str
    latencies: List[float] = field(default_factory=list)
    max_levels: Optional[int] = None
    mean_levels: Optional[float] = None
    error: Optional[str] = None

    @property
    def latency(self) -> float:
        return statistics.median(self.latencies)


def photo_input(size: Tuple[int, int]) -> Tensor:
    """(1, 3, H, W) float32 in [0, 1]: scikit-image's astronaut photograph, resized to cover (H, W) and
    centre-cropped (a real photo: differences between runtimes on it are those a user sees)."""
    import cv2
    import skimage.data

    img = skimage.data.astronaut()
    h, w = size
    factor = max(h / img.shape[0], w / img.shape[1])
    if factor > 1:
        img = cv2.resize(img, (int(np.ceil(img.shape[1] * factor)), int(np.ceil(img.shape[0] * factor))),
                         interpolation=cv2.INTER_CUBIC)
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    crop = img[top:top + h, left:left + w].astype(np.float32) / 255.
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]


def calibrate(net: nn.Module, x: Tensor) -> nn.Module:
    """``net`` in eval mode with its BatchNorm statistics measured on ``x`` (one batch, cumulative average)."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def levels(y: Tensor) -> Tensor:
    """An output as the 8-bit image it is saved as: clamped to [0, 1], times 255, rounded (int32)."""
    return (y.float().clamp(0, 1) * 255).round().to(torch.int32)


def measure_backends(names: List[str], net: nn.Module, anchor: nn.Module, size: Tuple[int, int], threads: int,
                     runs: int, warmup: int, progress: bool,
                     trained: bool = False) -> Tuple[List[BackendResult], BackendResult]:
    """Build every backend of ``names`` from ``net`` (calibrated here unless ``trained``: a checkpoint's
    statistics are kept), time them and ``anchor`` (SwinIR-light, PyTorch float32) round-robin, and compare
    their outputs with PyTorch float32's.

    Returns the backends' rows and the anchor's.
    """
    from tqdm import tqdm

    from elan_arch.bench.training import interleaved_times, report_failure

    device = torch.device('cpu')
    x = photo_input(size)
    net = net.eval() if trained else calibrate(net, x)
    with torch.inference_mode():
        reference = levels(net(x))
    results = [BackendResult(name, BACKENDS[name].label) for name in names]
    anchor_row = BackendResult('swinir-light', 'SwinIR-light (PyTorch float32)')
    calls: Dict[str, Callable[[], None]] = {anchor_row.name: lambda: anchor(x)}
    with tempfile.TemporaryDirectory(prefix='elan-bench-') as tmp, torch.inference_mode(), \
            tqdm(total=(len(names) + 1) * (warmup + runs) + len(names), unit='run', disable=not progress) as bar:
        for result in results:
            spec = BACKENDS[result.name]
            missing = spec.missing()
            bar.update()
            if missing:
                result.error = f'unavailable: {", ".join(missing)} not installed ({spec.pip})'
                continue
            workdir = Path(tmp) / result.name
            workdir.mkdir()
            try:
                run = spec.build(net, workdir, threads)
                out = levels(run(x))
            except Exception as error:  # noqa: BLE001 (reported in the table; the others go on)
                result.error = report_failure('elan bench', result.label, error, device)
                continue
            diff = (out - reference).abs()
            result.max_levels, result.mean_levels = int(diff.max()), float(diff.float().mean())
            calls[result.name] = (lambda run=run: run(x))
        keyed = [anchor_row] + results
        bar.total = len(names) + len(calls) * (warmup + runs)
        times, errors = interleaved_times(calls, {r.name: r.label for r in keyed}, warmup, runs, device,
                                          'elan bench', bar)
    for row in keyed:
        if row.name in calls or row.name in errors:
            row.latencies, row.error = times.get(row.name, []), errors.get(row.name, row.error)
    return results, anchor_row


def markdown_backends(results: List[BackendResult], anchor: BackendResult, setup: str) -> str:
    """The backends' table (set-up line above it): latency, speed-ups against SwinIR-light and PyTorch float32,
    output difference to PyTorch float32 in 8-bit levels."""
    torch_row = next((r for r in results if r.name == 'torch' and r.error is None), None)

    def ratio(base: Optional[BackendResult], row: BackendResult) -> str:
        return f'{base.latency / row.latency:.2f}x' if base is not None and base.error is None else 'n/a'

    lines = [setup, '',
             '| backend | latency (ms, median) | speed-up vs SwinIR-light | speed-up vs PyTorch float32 | '
             'max diff (8-bit levels) | mean diff (8-bit levels) |',
             '|---|---:|---:|---:|---:|---:|']
    for row in results + [anchor]:
        if row.error is not None:
            lines.append(f'| {row.label} | {row.error} | n/a | n/a | n/a | n/a |')
            continue
        diff = (f'{row.max_levels} | {row.mean_levels:.4f}' if row.max_levels is not None else 'n/a | n/a')
        lines.append(f'| {row.label} | {row.latency * 1e3:.0f} (min {min(row.latencies) * 1e3:.0f}) | '
                     f'{ratio(anchor, row)} | {ratio(torch_row, row) if row is not anchor else "n/a"} | {diff} |')
    return '\n'.join(lines) + '\n'
