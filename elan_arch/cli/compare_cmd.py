"""``elan compare -i SET --scale S -m bicubic -m CHECKPOINT [-m ...] -o OUT``: models side by side on test sets,
as a self-contained web page, paper-style figures and a CSV (:mod:`elan_arch.compare`)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from elan_arch.compare.specs import parse_model, parse_net


def _crop(text: str):
    from elan_arch.compare.figures import parse_crop

    try:
        return parse_crop(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(subparsers: argparse._SubParsersAction) -> None:
    from elan_arch.cli.options import add_network_options

    parser = subparsers.add_parser(
        'compare', help='compare models on test sets: web page, figures, CSV',
        description='Run two or more super-resolution models (bicubic, ELAN checkpoints of any format, exported '
        'models, BasicSR archs of option files or --net) on test sets, measure Y-channel PSNR/SSIM exactly as '
        '`basicsr test` does (crop border = scale) and the latency, and write OUT/index.html (a self-contained '
        'page that works from disk: summary tables, per-image tables sortable by gain, a viewer with a '
        'before/after slider, synchronised pixel zoom and differences), OUT/figures/ (paper-style crops, PNG '
        'and PDF), OUT/results.csv and OUT/results.json. Exit status 1 when a model or an image could not be '
        'compared (the rest is written), 2 for usage faults.',
        epilog='Example: elan compare -i datasets/Set5 --scale 4 -m bicubic -m ELAN=net_g_latest.pth '
        "--net 'name=SwinIR-light,type=SwinIR,upscale=4,img_size=64,window_size=8,embed_dim=60,depths=[6,6,6,6],"
        "num_heads=[6,6,6,6],mlp_ratio=2,upsampler=pixelshuffledirect,weights=swinir_light_x4.pth' -o compare_set5")
    parser.add_argument('-i', '--input', action='append', required=True, type=Path, metavar='SET',
                        help='a test set (repeatable): a folder in BasicSR\'s layout (GTmod12/ + LRbicx<S>/, or HR/ + '
                        'LR_bicubic/X<S>/), a folder of HR images (LR made by MATLAB bicubic, as elan prepare '
                        'benchmark does), or an option file whose datasets are read')
    parser.add_argument('--scale', type=int, required=True, help='upscale factor of the comparison')
    parser.add_argument('-m', '--model', action='append', dest='models', type=parse_model, default=[],
                        metavar='[NAME=]MODEL',
                        help='a model (repeatable, in page order): bicubic, an ELAN checkpoint (.pth/.safetensors), '
                        'an exported model (.onnx), or a BasicSR option file (.yml: network_g and '
                        'path:pretrain_network_g); NAME= names it on the page. Bicubic is always included')
    parser.add_argument('--net', action='append', dest='models', type=parse_net, metavar="'type=ARCH,...'",
                        help='a network_g on the command line (repeatable), values as YAML; extra keys name=, '
                        'weights=PATH, param_key=, strict=false; without weights: random initialisation (seeded)')
    parser.add_argument('-o', '--output', required=True, type=Path, help='output folder (index.html and the rest)')
    parser.add_argument('--crop', type=_crop, metavar='X,Y,W,H',
                        help='the figures\' box in HR pixels (default: where the models differ most)')
    parser.add_argument('--figures', type=int, default=8, metavar='N',
                        help='figures per set: the N images whose models\' PSNRs spread widest (default: 8; 0: none)')
    parser.add_argument('--tile', type=int, default=0, metavar='N',
                        help='run networks in N x N LR-pixel tiles (for large images; default: whole images)')
    parser.add_argument('--tile-overlap', type=int, default=32, metavar='M', help='tile overlap in LR pixels')
    parser.add_argument('--device', default='auto', help='cpu, cuda or cuda:N (default: cuda if available)')
    parser.add_argument('--half', action='store_true', help='float16 networks (CUDA only)')
    add_network_options(parser, 'each ELAN checkpoint of -m')
    parser.add_argument('--force', action='store_true', help='replace the output folder if it exists')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elan_arch.cli.options import network_overrides
    from elan_arch.compare.runner import CompareOptions, compare
    from elan_arch.utils.errors import ElanError

    if not args.models:
        raise ElanError('name the models to compare with -m (e.g. -m bicubic -m net_g_latest.pth) or --net')
    if getattr(args, 'unsafe_load', False):
        raise ElanError('--unsafe-load: elan compare reads checkpoints safely only; convert the file once with '
                        '`elan convert --unsafe-load` and compare the converted checkpoint')
    if args.tile < 0 or args.tile_overlap < 0:
        raise ElanError('--tile and --tile-overlap must be at least 0')
    options = CompareOptions(args.input, args.scale, args.models, args.output, args.device, args.half, args.tile,
                             args.tile_overlap, args.crop, args.figures, args.force, args.quiet,
                             command=shlex.join(['elan', *sys.argv[1:]]) if sys.argv[1:2] == ['compare'] else
                             'elan compare', overrides=network_overrides(args))
    outcome = compare(options)
    page = outcome.output / 'index.html'
    for test_set in outcome.results['sets']:
        for name, s in test_set['summary'].items():
            if s.get('images'):
                print(f'{test_set["name"]:>12}  {name:<24} {s["psnr"]:7.2f} dB  {s["ssim"]:.4f}  '
                      f'{s["ms"]:8.1f} ms/image')
    if outcome.problems:
        print(f'elan compare: {len(outcome.problems)} problem(s); the page lists what was not compared',
              file=sys.stderr)
    print(f'Comparison page: {page}')
    return outcome.status
