"""The one place an ELAN runtime is chosen: PyTorch (float32, float16 on CUDA, bfloat16), onnxruntime or OpenVINO,
each as a callable on (B, C, H, W) tensors that :func:`~elan_arch.inference.upscale.upscale_array` runs
like the PyTorch network.

:func:`load_backend` takes one model source (a checkpoint, an ``elan export`` ONNX model, an OpenVINO IR) and
returns a :class:`Backend`: the callable, its scale and padding multiple, and a description of where it runs.
``elan upscale``, ``elan bench`` and ``elan compare`` choose their runtimes here; :func:`add_backend_options` /
:func:`backend_from_args` are the command-line side of it. ncnn: see docs/deployment.md (not offered).

bfloat16 on the CPU needs native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in the CPU's flags):
elsewhere oneDNN emulates it, slower than float32, so it is refused (:func:`bf16_unsupported_reason`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from elan_arch.utils.cpu_tuning import bf16_unsupported_reason
from elan_arch.utils.errors import ElanError

if TYPE_CHECKING:  # torch loads when a model does, not when a command parses its options
    import torch
    from torch import Tensor

#: The model-source options, in the order the help lists them: option name -> what it reads.
SOURCES: Dict[str, str] = {
    'weights': 'ELAN checkpoint (.pth/.pt/.safetensors) run by PyTorch',
    'onnx': 'an `elan export` ONNX model run by onnxruntime (CPU, or CUDA with onnxruntime-gpu)',
    'openvino': 'an `elan export --format openvino` IR (MODEL.xml beside MODEL.bin) run by OpenVINO on the CPU',
}
_METAVARS = {'weights': 'W', 'onnx': 'MODEL.onnx', 'openvino': 'MODEL.xml'}

@dataclass
class Backend:
    """A loaded model: ``net`` (B, C, H, W) -> (B, C, H*scale, W*scale) with ``device``/``dtype``
    (:func:`~elan_arch.inference.upscale.placement`), its ``scale``, ``pad_multiple`` (inputs padded to it see
    the same window grid; tiles are multiples of it) and ``where`` (runtime, device, precision; for messages)."""
    net: Callable[[Tensor], Tensor]
    scale: int
    pad_multiple: int
    where: str
    kind: str


def torch_dtype(device: torch.device, half: bool, bf16: bool) -> torch.dtype:
    """The dtype for ``--half`` (float16, CUDA only) or ``--bf16`` (bfloat16: CUDA, or a CPU with native
    bfloat16); ElanError naming the option otherwise."""
    import torch

    if half and bf16:
        raise ElanError('--half and --bf16 both ask for a precision: give one (float16 on CUDA, bfloat16 on a CPU '
                        'with native bfloat16 or on CUDA)')
    if half:
        if device.type != 'cuda':
            raise ElanError('--half needs a CUDA device (float16 is slow or unsupported on the CPU); drop --half, '
                            'use --bf16 on a CPU with native bfloat16, or pass --device cuda')
        return torch.float16
    if bf16:
        reason = None if device.type == 'cuda' else bf16_unsupported_reason()
        if reason:
            raise ElanError(f'--bf16: {reason}; drop --bf16 (float32 is the fastest precision here)')
        return torch.bfloat16
    return torch.float32


def torch_backend(net: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                  compile_mode: Optional[str] = None) -> Backend:
    """A PyTorch ELAN (or any module with ``upscale``/``pad_multiple``) prepared to run on ``device`` in ``dtype``
    (eval mode: ELAN's fast path), compiled in ``compile_mode`` unless None."""
    import torch

    from elan_arch.inference.upscale import prepare_network

    precision = {torch.float16: 'float16', torch.bfloat16: 'bfloat16'}.get(dtype, 'float32')
    kind = 'torch' if dtype == torch.float32 else f'torch-{"bf16" if dtype == torch.bfloat16 else "fp16"}'
    scale, multiple = net.upscale, net.pad_multiple
    return Backend(prepare_network(net, device, dtype, compile_mode), scale, multiple,
                   f'{device} (PyTorch, {precision})', kind)


def _runtime_backend(kind: str, path: str, device: str, threads: Optional[int], bf16: bool) -> Backend:
    if kind == 'onnx':
        from elan_arch.deploy.onnx_runtime import OnnxNetwork

        net = OnnxNetwork(path, device, threads=threads)
        return Backend(net, net.upscale, net.pad_multiple, f'onnxruntime ({net.providers[0]})', 'onnxruntime')
    if device not in ('cpu', 'auto'):
        raise ElanError(f'--{kind} runs on the CPU only here: drop --device {device} (or use --device cpu)')
    from elan_arch.deploy.openvino_runtime import OpenVinoNetwork

    if bf16:
        reason = bf16_unsupported_reason()
        if reason:
            raise ElanError(f'--bf16: {reason}; drop --bf16 (OpenVINO then runs float32)')
    net = OpenVinoNetwork(path, threads=threads, precision='bfloat16' if bf16 else 'float32')
    return Backend(net, net.upscale, net.pad_multiple, f'OpenVINO (CPU, {net.precision})', 'openvino')


def load_backend(weights: Optional[str] = None, onnx: Optional[str] = None, openvino: Optional[str] = None,
                 device: str = 'auto', half: bool = False, bf16: bool = False,
                 compile_mode: Optional[str] = None, fused_attention: bool = False, threads: Optional[int] = None,
                 scale: Optional[int] = None, overrides: Optional[Dict[str, Any]] = None,
                 unsafe: bool = False) -> Backend:
    """The model of exactly one source, ready to run.

    Args:
        weights: A checkpoint run by PyTorch on ``device`` (``auto``: CUDA if available), float32, or float16
            (``half``, CUDA) or bfloat16 (``bf16``: CUDA, or a CPU with native bfloat16), compiled in
            ``compile_mode`` unless None, with ``fused_attention`` (CUDA's Triton kernels).
        onnx, openvino: An exported model run by that runtime with ``threads`` threads (None: PyTorch's
            count for OpenVINO, onnxruntime's own rule for ONNX); their precision is the model's, except
            that OpenVINO runs float32 unless ``bf16`` (:mod:`~elan_arch.deploy.openvino_runtime`).
        scale: Refuse a model of another upscale factor (``--scale``).
        overrides: Network options for the checkpoint (``--opt``, ``--window-sizes``, ...), as
            :func:`~elan_arch.deploy.checkpoint.load_network_from_checkpoint` takes them; ``unsafe``: unpickle
            any object (``--unsafe-load``).

    Raises:
        ElanError: no source or several, options that do not apply to the source, a missing extra (naming its
            pip line), an unreadable model, an unavailable device or precision, another scale.
    """
    given = {name: value for name, value in (('weights', weights), ('onnx', onnx), ('openvino', openvino)) if value}
    if len(given) != 1:
        named = ', '.join(f'--{name}' for name in given) or 'none'
        raise ElanError(f'give exactly one model: --weights, --onnx or --openvino (given: {named})')
    (kind, source), = given.items()
    if kind != 'weights':
        used = [opt for opt, on in (('--half', half), ('--bf16', bf16 and kind != 'openvino'),
                                    ('--compile', compile_mode), ('--fused-attention', fused_attention),
                                    ('--unsafe-load', unsafe)) if on]
        if used:
            raise ElanError(f'{"/".join(used)}: not for --{kind}: the exported model\'s precision and operations are '
                            'fixed at export (see elan export --help)')
        if overrides:
            raise ElanError(f'--opt/--window-sizes/--shift-windows/--img-range do not apply to --{kind}: the model '
                            'was built at export (pass them to elan export)')
        backend = _runtime_backend(kind, source, device, threads, bf16)
    else:
        from elan_arch.deploy.checkpoint import load_network_from_checkpoint
        from elan_arch.inference.upscale import select_device

        torch_device, _ = select_device(device, False)
        dtype = torch_dtype(torch_device, half, bf16)
        net = load_network_from_checkpoint(source, unsafe=unsafe, overrides=overrides)
        if fused_attention:
            from elan_arch.archs import window_kernels

            reason = window_kernels.unavailable_reason(torch_device)
            if reason:
                raise ElanError(f'--fused-attention: cannot run the fused attention kernels: {reason}')
            net.fused_attention = True
        if threads and torch_device.type == 'cpu':
            import torch

            torch.set_num_threads(threads)
        backend = torch_backend(net, torch_device, dtype, compile_mode)
        if fused_attention:
            backend.where += ', fused attention'
    if scale is not None and backend.scale != scale:
        raise ElanError(f'{source} holds an x{backend.scale} ELAN but --scale {scale} was asked; '
                        f'use an x{scale} model or drop --scale')
    return backend


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--weights | --onnx | --openvino`` (exactly one) and ``--bf16``, read by :func:`backend_from_args`
    (with ``--device``/``--half``/``--compile`` of :func:`~elan_arch.cli.options.add_device_options`)."""
    group = parser.add_mutually_exclusive_group(required=True)
    for name, text in SOURCES.items():
        group.add_argument(f'--{name}', metavar=_METAVARS[name], help=text)
    parser.add_argument('--bf16', action='store_true',
                        help='bfloat16 arithmetic, for --weights (PyTorch; CUDA, or a CPU with native bfloat16: '
                        'AVX512-BF16 or AMX, refused elsewhere) and --openvino (its bf16 precision hint); see '
                        'docs/deployment.md for speed and output difference')


def backend_from_args(args: argparse.Namespace) -> Backend:
    """:func:`load_backend` for the options of :func:`add_backend_options`, ``add_device_options`` and (where the
    command has them) ``add_network_options`` of :mod:`elan_arch.cli.options`."""
    from elan_arch.cli.options import network_overrides

    overrides = network_overrides(args) if hasattr(args, 'window_sizes') else None
    return load_backend(weights=args.weights, onnx=args.onnx, openvino=args.openvino,
                        device=args.device, half=args.half, bf16=args.bf16, compile_mode=args.compile,
                        fused_attention=getattr(args, 'fused_attention', False),
                        threads=getattr(args, 'threads', None), scale=getattr(args, 'scale', None),
                        overrides=overrides, unsafe=getattr(args, 'unsafe_load', False))
