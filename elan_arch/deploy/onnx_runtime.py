"""Running an exported ELAN (``elan export``) with onnxruntime, as a drop-in for the PyTorch network.

:class:`OnnxNetwork` is called like the network on (B, C, H, W) tensors, so
:func:`elan_arch.inference.upscale.upscale_array` (and its tiling) runs it unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from elan_arch.utils.errors import ElanError
from elan_arch.utils.extras import require
from elan_arch.utils.fileio import PathLike

_DTYPES = {'tensor(float)': torch.float32, 'tensor(float16)': torch.float16}


def providers_for(device: str) -> List[str]:
    """onnxruntime execution providers for ``--device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    ort = require('onnxruntime', 'onnx', 'running an ONNX model')
    available = ort.get_available_providers()
    if device == 'auto':
        device = 'cuda' if 'CUDAExecutionProvider' in available else 'cpu'
    if device.startswith('cuda'):
        if 'CUDAExecutionProvider' not in available:
            raise ElanError(f'--device {device}: this onnxruntime has no CUDA provider '
                            f'(it has {", ".join(available)}); '
                            'install onnxruntime-gpu or use --device cpu')
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


def spinning() -> bool:
    """Whether onnxruntime's threads spin between operations: as PyTorch's OpenMP threads do, i.e. unless
    ``OMP_WAIT_POLICY`` is ``PASSIVE`` (which the ``elan`` commands set when other work keeps the CPU busy,
    :mod:`elan_arch.utils.cpu_tuning`). Spinning threads are faster on an idle CPU and many times slower on a
    shared one (docs/performance.md, "OpenMP waiting on a shared CPU")."""
    return os.environ.get('OMP_WAIT_POLICY', '').upper() != 'PASSIVE'


def session_options(ort, threads: Optional[int] = None):
    """The ``SessionOptions`` every ELAN session gets: ``threads`` intra-op threads (default PyTorch's,
    ``torch.get_num_threads()``), all graph optimisations (constant folding, fusions, the CPU's blocked
    NCHWc convolution layout), sequential execution (ELAN is a chain: no inter-op threads), and spinning
    as :func:`spinning` says."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = '1' if spinning() else '0'
    options.add_session_config_entry('session.intra_op.allow_spinning', spin)
    options.add_session_config_entry('session.inter_op.allow_spinning', spin)
    return options


class OnnxNetwork:
    """An ``elan export`` model in an onnxruntime session.

    Attributes (from the model's metadata): ``upscale``, ``pad_multiple``, ``colors``,
    ``dtype`` (the model's input dtype), ``metadata`` (all of it); ``device`` is the CPU:
    inputs and outputs are CPU tensors whatever provider runs the graph.

    Call: (B, colors, H, W) tensor of ``dtype`` in [0, 1] -> (B, colors, H*upscale, W*upscale).
    """

    device = torch.device('cpu')

    def __init__(self, path: PathLike, device: str = 'cpu', threads: Optional[int] = None) -> None:
        """``threads``: onnxruntime's intra-op threads (default PyTorch's); the other session settings:
        :func:`session_options`."""
        ort = require('onnxruntime', 'onnx', 'running an ONNX model')
        path = Path(path)
        if not path.is_file():
            raise ElanError(f'{path}: no such ONNX model file')
        options = session_options(ort, threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise ElanError(f'{path}: onnxruntime cannot load this model ({str(err).splitlines()[0]})') from err
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if 'elan.scale' not in self.metadata:
            raise ElanError(f'{path}: no ELAN metadata (elan.scale); models written by `elan export` have it')
        inp = self.session.get_inputs()[0]
        if inp.type not in _DTYPES or len(inp.shape) != 4:
            raise ElanError(f'{path}: input {inp.name} is {inp.type} {inp.shape}, expected a float (B, C, H, W) tensor')
        self.input_name, self.dtype = inp.name, _DTYPES[inp.type]
        self.colors = int(inp.shape[1])
        self.upscale = int(self.metadata['elan.scale'])
        self.pad_multiple = int(self.metadata.get('elan.pad_multiple', 16))
        self.providers = self.session.get_providers()
        #: (B, C, H, W) of a fixed-shape export (``elan export --shape/--tile``), None for dynamic axes.
        self.fixed_shape = tuple(inp.shape) if all(isinstance(d, int) for d in inp.shape) else None
        self.path = path

    def __call__(self, x: Tensor) -> Tensor:
        if self.fixed_shape is not None and tuple(x.shape) != self.fixed_shape:
            shape = 'x'.join(map(str, self.fixed_shape))
            raise ElanError(f'{self.path}: this model was exported for inputs of shape {shape} only, got '
                            f'{"x".join(map(str, x.shape))}; export without --shape/--tile for any size, or run it on '
                            f'{self.fixed_shape[2]}x{self.fixed_shape[3]} tiles')
        array = np.ascontiguousarray(x.detach().cpu().to(self.dtype).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
