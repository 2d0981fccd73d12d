"""``elan convert SRC DST``: any ELAN checkpoint -> BasicSR ``{'params': state_dict, 'network_g': options}`` or
safetensors (the options in its metadata)."""
from __future__ import annotations

import argparse

import yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    from elan_arch.cli.options import add_network_options

    parser = subparsers.add_parser(
        'convert',
        description="Read an ELAN checkpoint saved by the authors' training code ({'model_state_dict': "
        "{'module.<key>': ...}, ...}), by traiNNer-redux (.safetensors or .pth; its default norm: false "
        "network has no mean shift and becomes rgb_mean: ~, img_range: 1), by this package (.safetensors), or "
        "any BasicSR/bare state_dict; infer the variant and scale from the tensor shapes, check that the "
        "weights load strictly, and write {'params': state_dict, 'network_g': the network's options} for "
        "BasicSR's path.pretrain_network_g (with strict_load_g: true), or a .safetensors file with the network_g "
        "options as metadata. Window sizes and shifted windows come from the file's record or its run's option "
        "file, else are assumed and said so.")
    parser.add_argument('src', help='checkpoint to read (.pth/.pt/.safetensors)')
    parser.add_argument('dst', help='checkpoint to write (.pth, or .safetensors)')
    parser.add_argument('--format', choices=['pth', 'safetensors'], dest='fmt',
                        help='output format (default: safetensors for a .safetensors DST, else pth)')
    parser.add_argument('--scale', type=int, dest='upscale', help='override the inferred upscale factor')
    parser.add_argument('--force', action='store_true', help='replace DST if it exists')
    add_network_options(parser, 'SRC')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from elan_arch.cli.options import network_overrides
    from elan_arch.deploy.checkpoint import convert_checkpoint, output_format

    fmt = output_format(args.dst, args.fmt)
    config = convert_checkpoint(args.src, args.dst, overwrite=args.force, unsafe=args.unsafe_load, fmt=fmt,
                                overrides=network_overrides(args), upscale=args.upscale)
    snippet = {'network_g': {'type': 'ELAN', **config}}
    if fmt == 'safetensors':  # BasicSR's pretrain_network_g reads torch.save files only
        print(f'wrote {args.dst} (safetensors; these network_g settings are in its metadata):')
    else:
        print(f'wrote {args.dst}; use it in an option file with:')
        snippet['path'] = {'pretrain_network_g': args.dst, 'strict_load_g': True, 'param_key_g': 'params'}
    print(yaml.safe_dump(snippet, sort_keys=False, default_flow_style=None).rstrip())
    return 0
