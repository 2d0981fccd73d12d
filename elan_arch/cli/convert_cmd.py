"""``elan convert SRC DST``: the authors' ELAN checkpoint -> BasicSR ``{'params': state_dict}``."""
from __future__ import annotations

import argparse

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'convert',
        help="convert an authors' ELAN checkpoint to a BasicSR checkpoint",
        description="Read an ELAN checkpoint saved by the authors' training code ({'model_state_dict': "
        "{'module.<key>': ...}, ...}) or any BasicSR/bare state_dict, infer the variant and scale from "
        "the tensor shapes, check that the weights load strictly, and write {'params': state_dict} for "
        "BasicSR's path.pretrain_network_g (with strict_load_g: true).")
    parser.add_argument('src', help='checkpoint to read')
    parser.add_argument('dst', help='BasicSR checkpoint to write (.pth)')
    parser.add_argument('--scale', type=int, dest='upscale', help='override the inferred upscale factor')
    parser.add_argument('--window-sizes', type=int, nargs='+', help='attention window sizes (default: 4 8 16)')
    parser.add_argument('--img-range', type=float, help='override the inferred pixel range (reference: 255)')
    parser.add_argument('--force', action='store_true', help='replace DST if it exists')
    parser.add_argument('--unsafe-load', action='store_true',
                        help='unpickle arbitrary Python objects in SRC (only for files you trust)')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_checkpoint

    config = convert_checkpoint(args.src, args.dst, overwrite=args.force, unsafe=args.unsafe_load,
                                upscale=args.upscale, window_sizes=args.window_sizes, img_range=args.img_range)
    print(f'wrote {args.dst}; use it in an option file with:')
    snippet = {'network_g': {'type': 'ELAN', **config},
               'path': {'pretrain_network_g': args.dst, 'strict_load_g': True, 'param_key_g': 'params'}}
    print(yaml.safe_dump(snippet, sort_keys=False, default_flow_style=None).rstrip())
    return 0
