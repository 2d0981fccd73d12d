"""``elan prepare {div2k,benchmark,realworld,realworld-paired,demo,check}``: datasets in the layouts BasicSR's
option files read."""
from __future__ import annotations

import argparse
import sys
import os


def _common(parser: argparse.ArgumentParser, scales: bool = True, workers: bool = True,
            one_worker: bool = False) -> None:
    """The options every preparation shares; ``one_worker``: ``--workers`` defaults to 1, for inputs so small
    that starting worker processes (each imports torch and basicsr) costs more than it saves (the demo's
    figures: docs/data.md, "Speed and workers")."""
    if scales:
        parser.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4], help='upscale factors (default: 2 3 4)')
    if workers:
        parser.add_argument('--workers', type=int, default=1 if one_worker else min(8, os.cpu_count() or 1),
                            help='parallel worker processes (default: ' + ('1: the photos are small' if one_worker
                                                                           else 'CPU cores, at most 8') + ')')
        parser.add_argument('--force', action='store_true', help='replace outputs that already exist')
        parser.add_argument('--quiet', action='store_true', help='no progress bars')


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'prepare',
        description='Write datasets in the layouts BasicSR reads: DIV2K sub-image LMDBs for training, '
        'GTmod12/LRbicx{s} folders for the test sets, a small real demo dataset; check an LMDB pair. '
        'See datasets/README.md.')
    sub = parser.add_subparsers(dest='what', required=True, metavar='WHAT')

    div2k = sub.add_parser('div2k',
                           help='DIV2K folder -> DIV2K_train_HR_sub.lmdb + DIV2K_train_LR_bicubic_X{s}_sub.lmdb',
                           description='Crop DIV2K_train_HR (and DIV2K_train_LR_bicubic/X{s}, or LR made from HR '
                           'by MATLAB bicubic where that folder is missing) into aligned sub-images and store them '
                           'in BasicSR LMDBs with meta_info.txt.')
    div2k.add_argument('--input', required=True, help='DIV2K folder holding DIV2K_train_HR/ (e.g. datasets/DIV2K)')
    div2k.add_argument('--output', help='where the LMDBs go (default: --input)')
    div2k.add_argument('--crop-size', type=int, default=480, help='HR crop size (default: 480, BasicSR)')
    div2k.add_argument('--step', type=int, default=240, help='HR crop stride (default: 240, BasicSR)')
    div2k.add_argument('--keep-subimages', action='store_true',
                       help='also keep the crops as PNG folders DIV2K_train_HR_sub/ and '
                       'DIV2K_train_LR_bicubic/X{s}_sub/')
    _common(div2k)

    bench = sub.add_parser('benchmark', help='HR test images -> <set>/GTmod12 + <set>/LRbicx{s}',
                           description='Mod-crop HR test images to a multiple of 12 (GTmod12/) and make their LR '
                           'images by MATLAB bicubic (LRbicx{s}/), the layout of BasicSR\'s test option files.')
    bench.add_argument('--input', required=True, nargs='+',
                       help='set folders with their HR images directly inside or in HR/ '
                       '(e.g. datasets/Set5 datasets/Set14)')
    bench.add_argument('--output', help='output set folder (only with one --input; default: the set folder)')
    _common(bench)

    demo = sub.add_parser('demo', help='the bundled demo dataset (scikit-image photos) under datasets/demo',
                          description='Build a small real DIV2K-layout dataset and its LMDBs (crop 240, step 120) '
                          'from photographs bundled with scikit-image, plus a held-out validation set in the '
                          'benchmark layout.')
    demo.add_argument('--root', default='datasets/demo', help='output folder (default: datasets/demo)')
    _common(demo, one_worker=True)

    _register_realworld(sub)

    check = sub.add_parser('check', help='check a GT/LQ LMDB pair before training on it',
                           description='Check meta_info.txt against the LMDB keys, that GT and LQ hold the same '
                           'keys, and that every GT image is --scale times its LQ image.')
    check.add_argument('--gt', required=True, help='GT LMDB folder (e.g. datasets/DIV2K/DIV2K_train_HR_sub.lmdb)')
    check.add_argument('--lq', required=True,
                       help='LQ LMDB folder (e.g. datasets/DIV2K/DIV2K_train_LR_bicubic_X4_sub.lmdb)')
    check.add_argument('--scale', type=int, required=True, help='upscale factor between the two')
    parser.set_defaults(func=run)


def _register_realworld(sub: argparse._SubParsersAction) -> None:
    """``realworld`` (HR-only sets for RealESRGANDataset) and ``realworld-paired`` (RealESRGANPairedDataset)."""
    def crops_and_backend(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--crop-size', type=int, default=400,
                            help='crop size (default: 400, Real-ESRGAN\'s; 0: keep images whole)')
        parser.add_argument('--step', type=int, default=200, help='crop stride (default: 200)')
        parser.add_argument('--backend', nargs='+', default=['folder'], choices=['folder', 'lmdb'],
                            help='folder: crops + meta_info txt (io_backend disk); lmdb: an LMDB; both: '
                            '--backend folder lmdb (default: folder)')
        _common(parser, scales=False)

    real = sub.add_parser(
        'realworld', help='HR-only photos -> multiscale sub-images + meta_info (or LMDB) for RealESRGANDataset',
        description='Real-ESRGAN\'s data preparation for the Real-ESRNet/Real-ESRGAN pipeline: each image plus its '
        'multiscale copies (x0.75, x0.5, x1/3 and shortest edge 400, Pillow Lanczos), cut into 400-pixel '
        'sub-images every 200 pixels, listed in meta_info/meta_info_<name>_sub.txt (or stored in '
        '<name>_sub.lmdb). See docs/realworld.md.')
    real.add_argument('--input', required=True, nargs='+',
                      help='folders of HR images (e.g. datasets/DF2K/DF2K_HR datasets/OST); name stems must be unique')
    real.add_argument('--output', required=True, help='output folder: the dataroot_gt of the option file '
                      '(e.g. datasets/DF2K)')
    real.add_argument('--name', help='the set\'s name in the output names (default: the input folder names '
                      'joined by +)')
    real.add_argument('--no-multiscale', action='store_true',
                      help='no multiscale copies (e.g. for OST, or photos already small)')
    crops_and_backend(real)

    paired = sub.add_parser(
        'realworld-paired', help='GT + LQ folders -> aligned sub-images + "gt, lq" meta_info for '
        'RealESRGANPairedDataset',
        description='Fine-tuning on one\'s own pairs: GT and LQ images (LQ named like its GT image, or <stem>x<s>) '
        'cut into aligned sub-images, listed in meta_info/meta_info_<gt folder>_pair.txt as "gt, lq" lines '
        '(or stored in two LMDBs with the same keys).')
    paired.add_argument('--gt', required=True, help='folder of GT (high-resolution) images')
    paired.add_argument('--lq', required=True, help='folder of LQ images, each 1/scale of its GT image')
    paired.add_argument('--scale', type=int, required=True, help='upscale factor between LQ and GT')
    paired.add_argument('--output', required=True, help='output folder: dataroot_gt and dataroot_lq of the option '
                        'file')
    crops_and_backend(paired)


def run(args: argparse.Namespace) -> int:
    from elan_arch import prepare
    from elan_arch.data import check_lmdb_pair

    if args.what == 'check':
        result = check_lmdb_pair(args.gt, args.lq, args.scale)
        for warning in result.warnings:
            print(f'elan prepare check: warning: {warning}', file=sys.stderr)
        print(f'ok: {result.pairs} pairs, GT {result.gt_shape} / LQ {result.lq_shape} at x{result.scale}')
        return 0
    if args.what in ('realworld', 'realworld-paired'):
        return _run_realworld(args)
    common = dict(scales=args.scales, workers=args.workers, force=args.force, progress=not args.quiet)
    if args.what == 'div2k':
        summary = prepare.prepare_div2k(args.input, args.output, crop_size=args.crop_size, step=args.step,
                                        keep_subimages=args.keep_subimages, **common)
    elif args.what == 'benchmark':
        summary = prepare.prepare_benchmark(args.input, args.output, **common)
    else:
        summary = prepare.prepare_demo(args.root, **common)
    print(summary)
    return 0


def _run_realworld(args: argparse.Namespace) -> int:
    from pathlib import Path

    from elan_arch.prepare import realworld

    common = dict(backends=args.backend, crop_size=args.crop_size, step=args.step, workers=args.workers,
                  force=args.force, progress=not args.quiet)
    if args.what == 'realworld':
        summary = realworld.prepare_realworld(args.input, args.output, name=args.name,
                                              multiscale=not args.no_multiscale, **common)
        name = args.name or realworld.default_name(args.input)
        outputs = realworld.realworld_outputs(Path(args.output), name, args.backend)
    else:
        summary = realworld.prepare_realworld_pairs(args.gt, args.lq, args.output, args.scale, **common)
        outputs = realworld.paired_outputs(Path(args.output), Path(args.gt).resolve().name,
                                           Path(args.lq).resolve().name, args.backend)
    print(summary)
    print('Option file (datasets: train:), per back-end:')
    print('\n'.join('  ' + line for line in realworld.dataset_options(outputs, paired=args.what != 'realworld')))
    return 0
