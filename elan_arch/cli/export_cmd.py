"""``elan export WEIGHTS OUT.onnx``: an ELAN checkpoint to ONNX, checked with onnxruntime (``--format openvino``:
an OpenVINO IR, checked with OpenVINO)."""
from __future__ import annotations

import argparse

from elan_arch.utils.errors import ElanError


def register(subparsers: argparse._SubParsersAction) -> None:
    import torch

    from elan_arch.deploy.onnx_export import OPSET, TOLERANCE, VERIFY_SHAPES
    from elan_arch.cli.options import add_network_options

    checks = ' and '.join('x'.join(map(str, s)) for s in VERIFY_SHAPES)
    parser = subparsers.add_parser(
        'export',
        description='Export any ELAN checkpoint this package reads (BasicSR, the authors\', traiNNer-redux, '
        f'safetensors, bare state_dict) to ONNX opset {OPSET}: input "input" (batch, 3, H, W) RGB in [0, 1], output '
        '"output" (batch, 3, H*scale, W*scale); batch, height and width are dynamic and the padding to the '
        'window multiple and the crop are inside the graph, so any size >= 1 pixel works. The attention '
        'logits stay float32 in a --half model. The model is then run with onnxruntime on the CPU against '
        f'PyTorch at input shapes {checks} (batch x H x W, not the traced one); if the largest difference exceeds '
        f'--tolerance (default {TOLERANCE[torch.float32]:g} for float32, '
        f'{TOLERANCE[torch.float16]:g} for float16), the '
        'command fails with the measured difference and writes nothing. OUT is written atomically. '
        'With --shape or --tile the input shape is fixed instead, every shape computation folded into constants '
        '(for vs-mlrt, TensorRT, ncnn), and the check runs at that shape. The graph is written for runtimes '
        '(window gathers instead of rolls, tensors of rank <= 4, BatchNorm folded) and simplified by onnxsim; '
        'docs/deployment.md has the settings for chaiNNer and vs-mlrt.')
    parser.add_argument('weights', help='ELAN checkpoint (.pth/.pt/.safetensors)')
    parser.add_argument('out', help='model to write: .onnx, or .xml (OpenVINO IR; .bin beside it)')
    parser.add_argument('--format', choices=EXPORT_FORMATS,
                        help='onnx or openvino (IR converted from the ONNX graph, float32, checked with OpenVINO; '
                        'ncnn: see docs/deployment.md); default: from OUT\'s extension (.xml: openvino, else onnx)')
    parser.add_argument('--half', action='store_true', help='float16 model (float16 input and output)')
    parser.add_argument('--opset', type=int, default=OPSET, help=f'ONNX opset (default: {OPSET})')
    parser.add_argument('--dynamo', action='store_true',
                        help='use the torch.export-based exporter (opset >= 18) instead of the TorchScript-based '
                        'one; with --shape or --tile only')
    fixed = parser.add_mutually_exclusive_group()
    fixed.add_argument('--shape', metavar='BxCxHxW',
                       help='fixed input shape, e.g. 1x3x256x256 (default: dynamic batch, height and width)')
    fixed.add_argument('--tile', type=int, metavar='N', help='fixed input shape 1x3xNxN: one tile of vs-mlrt or '
                       'another tiling runtime (a multiple of 16, the window multiple, wastes no padding)')
    parser.add_argument('--tolerance', type=float, metavar='D',
                        help='largest accepted max |onnxruntime - PyTorch| on [0, 1] outputs (default: '
                        f'{TOLERANCE[torch.float32]:g}, with --half {TOLERANCE[torch.float16]:g}: '
                        'float16 rounding through '
                        'full ELAN\'s 36 blocks alone reaches a few 1e-3)')
    add_network_options(parser, 'WEIGHTS')
    parser.add_argument('--force', action='store_true', help='replace OUT if it exists')
    parser.set_defaults(func=run)


#: ``--format`` values; ``export_format`` picks one from OUT's extension.
EXPORT_FORMATS = ('onnx', 'openvino')


def export_format(args: argparse.Namespace) -> str:
    """``--format``, or the format OUT's extension implies; ElanError for options the format does not take."""
    from pathlib import Path

    suffix = Path(args.out).suffix.lower()
    fmt = args.format or ('openvino' if suffix == '.xml' else 'onnx')
    wanted = {'openvino': '.xml'}.get(fmt)
    if wanted and suffix != wanted:
        raise ElanError(f'--format {fmt} writes MODEL{wanted} (weights in MODEL.bin beside it): name OUT *{wanted}')
    unused = [opt for opt, on in (('--half', args.half), ('--dynamo', args.dynamo)) if on]
    if fmt != 'onnx' and unused:
        raise ElanError(f'{"/".join(unused)}: ONNX options, not for --format {fmt} (its model is float32; OpenVINO '
                        'runs it in bfloat16 with elan upscale --openvino M.xml --bf16)')
    return fmt


def run(args: argparse.Namespace) -> int:
    from elan_arch.cli.options import network_overrides
    from elan_arch.deploy.checkpoint import load_checkpoint
    from elan_arch.deploy.onnx_export import export_onnx, parse_shape
    from elan_arch.utils.fileio import check_output_free

    if args.tolerance is not None and not args.tolerance >= 0:
        raise ElanError(f'--tolerance {args.tolerance}: must be >= 0')
    fmt = export_format(args)
    check_output_free(args.out, args.force)  # before the export's work
    if args.tile is not None and args.tile < 1:
        raise ElanError(f'--tile {args.tile}: must be a positive tile size (e.g. 256)')
    net, config, source = load_checkpoint(args.weights, unsafe=args.unsafe_load, overrides=network_overrides(args))
    colors = net.head[0].in_channels
    shape = parse_shape(args.shape, colors) if args.shape else (1, args.tile, args.tile) if args.tile else None
    if fmt != 'onnx':
        from importlib import import_module

        module = import_module(f'elan_arch.deploy.{fmt}_runtime')
        print(f'exporting {args.weights} ({source} checkpoint) to {fmt}...', flush=True)
        result = getattr(module, f'export_{fmt}')(net, args.out, config, overwrite=args.force,
                                                   tolerance=args.tolerance, shape=shape)
        print(f'wrote {result.summary()}')
        return 0
    print(f'exporting {args.weights} ({source} checkpoint) to ONNX...', flush=True)
    result = export_onnx(net, args.out, config, half=args.half, opset=args.opset, dynamo=args.dynamo,
                         overwrite=args.force, tolerance=args.tolerance, shape=shape)
    print(f'wrote {result.summary()}')
    return 0
