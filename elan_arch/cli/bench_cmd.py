"""``elan bench``: the command line of :mod:`elan_arch.bench` (inference latency, the paper's ablation
variants with ``--ablation``, the runtimes with ``--backends``, or training steps with ``--train``); the
measurements themselves are in :mod:`elan_arch.bench.inference`, :mod:`elan_arch.bench.backends` and
:mod:`elan_arch.bench.training`, the models in :mod:`elan_arch.bench.models`."""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import List, Tuple

import torch

from elan_arch.archs import window_kernels
from elan_arch.bench.backends import BACKENDS
from elan_arch.bench.models import (ABLATION_MODELS, ABLATION_REFERENCE, MODELS, OPTIONAL_MODELS, TRAIN_MODELS,
                                    build_model)
from elan_arch.utils import cpu_tuning
from elan_arch.utils.errors import ElanError

DEFAULT_SIZE = '176x320'
#: ``--ablation``'s default input: the paper's latency size at x4 (1280x720 output).
ABLATION_SIZE = '180x320'


def register(subparsers: argparse._SubParsersAction) -> None:
    from elan_arch.cli.options import add_device_options, add_network_options

    parser = subparsers.add_parser(
        'bench',
        description='Measure parameters, FLOPs, median latency and peak memory of ELAN-light and ELAN (fast '
        'inference path, and ELAN-light on the reference arithmetic) next to BasicSR\'s SwinIR in its light '
        'configuration and the EDSR baseline, in one run on one random input; random weights (speed does not '
        'depend on them). Prints a markdown table and writes it with a bar chart.')
    parser.add_argument('--scale', type=int, help='upscale factor (default: 4; with --weights the checkpoint\'s)')
    parser.add_argument('--size', help=f'LR input HxW (default: {DEFAULT_SIZE}, i.e. 704x1280 output at x4; with '
                        f'--ablation {ABLATION_SIZE}, 720x1280; not with --train, which takes --patch and --batch)')
    parser.add_argument('--ablation', action='store_true',
                        help='measure the paper\'s ablation variants of ELAN-light (options/ablation/: no shift, 3x3 '
                        'LFE, single window sizes, standard attention, no or more sharing, no shifted windows), all on '
                        'the reference arithmetic, with ELAN-light on both paths and SwinIR-light as the anchor '
                        '(writes bench_ablation_<device>_x<scale>_<size>.md/.png; not with --models or --train)')
    parser.add_argument('--backends', type=backend_list, metavar='NAME,...',
                        help='measure ELAN-light (or the --weights checkpoint) through these runtimes instead '
                        '(comma-separated; '
                        f'{", ".join(BACKENDS)}; "all" for every one): latency, speed-up against SwinIR-light in '
                        'PyTorch float32 and against PyTorch float32, and the output difference to PyTorch float32 '
                        'in 8-bit levels on a real photo, in one interleaved run (CPU; writes '
                        'bench_backends_cpu_x<scale>_<size>.md; a runtime that is not installed is reported with '
                        'its pip line)')
    parser.add_argument('--weights', metavar='W',
                        help='with --backends: measure this ELAN checkpoint (its network and trained weights, '
                        'BatchNorm statistics kept) instead of ELAN-light with random weights')
    parser.add_argument('--models', nargs='+', choices=list(MODELS),
                        help=f'models to measure (default: all but {", ".join(OPTIONAL_MODELS)}: the ONNX export of '
                        'ELAN-light run by onnxruntime, CPU float32 only, and ELAN\'s reference arithmetic; '
                        f'with --train: {", ".join(TRAIN_MODELS)})')
    add_device_options(parser, 'cpu', 'torch.compile every model first (with --train: the training forward, as '
                       'train.compile does; compiling happens in the warm-up steps)')
    parser.add_argument('--threads', type=int, help='CPU threads (torch.set_num_threads; default: torch\'s)')
    parser.add_argument('--runs', type=int, default=5, help='timed forwards per model (default: 5)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed forwards per model first (default: 1)')
    parser.add_argument('--output-dir', type=Path, default=Path('bench_results'),
                        help='where bench_<device>_x<scale>_<size>.md/.png go (default: bench_results)')
    parser.add_argument('--force', action='store_true', help='replace existing result files')
    train = parser.add_argument_group('training steps (--train)')
    train.add_argument('--train', action='store_true',
                       help='time training steps (forward, L1, backward, Adam) instead of inference')
    train.add_argument('--batch', type=int, default=8, help='training batch (default: 8, the demo\'s)')
    train.add_argument('--patch', type=int, default=32, help='LR patch size (default: 32, the demo\'s)')
    train.add_argument('--amp', choices=['bf16', 'fp16'], help='forward under autocast (as train.amp)')
    train.add_argument('--loader-batches', type=int, default=20, help='batches the loader is timed on (default: 20)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    add_network_options(parser, '--weights', opt_also=' (with --weights); with --train, the data loader of its '
                        'training set is timed too')
    parser.set_defaults(func=run)


def backend_list(text: str) -> List[str]:
    """``'torch,onnxruntime'`` -> their names (``'all'``: every registered backend); argparse's error otherwise."""
    names = list(BACKENDS) if text.strip() == 'all' else [n.strip() for n in text.split(',') if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'unknown backend(s) {", ".join(unknown) or "(none given)"}; '
                                         f'choose from {", ".join(BACKENDS)} or all')
    return list(dict.fromkeys(names))


def run_backends(args: argparse.Namespace, size: Tuple[int, int], where: str) -> int:
    """``elan bench --backends``: the runtimes' table (:mod:`elan_arch.bench.backends`)."""
    from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS
    from elan_arch.bench.backends import markdown_backends, measure_backends
    from elan_arch.utils.fileio import atomic_path, check_output_free

    used = [opt for opt, on in (('--train', args.train), ('--ablation', args.ablation), ('--models', args.models),
                                ('--half', args.half), ('--compile', args.compile),
                                ('--device ' + args.device, args.device not in ('cpu', 'auto'))) if on]
    if used:
        raise ElanError(f'--backends measures ELAN-light in float32 through each runtime on the CPU: leave out '
                        f'{", ".join(used)}')
    name = 'ELAN-light'
    if args.weights:
        from elan_arch.cli.options import network_overrides
        from elan_arch.deploy.checkpoint import load_checkpoint, variant_name

        net, config, _ = load_checkpoint(args.weights, unsafe=args.unsafe_load, overrides=network_overrides(args))
        if args.scale not in (None, config['upscale']):
            raise ElanError(f'{args.weights} holds an x{config["upscale"]} ELAN but --scale {args.scale} was asked; '
                            'drop --scale (the checkpoint\'s is used)')
        args.scale, name = config['upscale'], f'{variant_name(config)} ({args.weights})'
    else:
        torch.manual_seed(0)
        net = ELAN(upscale=args.scale, **ELAN_VARIANTS['ELAN-light'])
    md_path = args.output_dir / f'bench_backends_cpu_x{args.scale}_{size[0]}x{size[1]}.md'
    check_output_free(md_path, args.force)
    results, anchor = measure_backends(args.backends, net, build_model('swinir-light', args.scale), size,
                                       torch.get_num_threads(), args.runs, args.warmup, not args.quiet,
                                       trained=bool(args.weights))
    setup = (f'{name} x{args.scale}, LR input {size[0]}x{size[1]} (a crop of scikit-image\'s astronaut photo), '
             f'batch 1, {where}; {datetime.date.today()}; median of {args.runs} runs after {args.warmup} warm-up, '
             f'backends interleaved; differences against PyTorch float32 in 8-bit levels; torch {torch.__version__}'
             f'{_versions()}; command: `elan bench --backends {",".join(args.backends)} '
             f'{args.network_flags}--scale {args.scale} '
             f'--size {args.size}{f" --threads {args.threads}" if args.threads else ""} --runs {args.runs} '
             f'--warmup {args.warmup}`')
    table = markdown_backends(results, anchor, setup)
    print(table)
    with atomic_path(md_path, overwrite=args.force) as tmp:
        tmp.write_text(table)
    print(f'wrote {md_path}')
    return 1 if any(r.error is not None and not r.error.startswith('unavailable') for r in results + [anchor]) else 0


def _versions() -> str:
    """``, onnxruntime 1.x, ...`` for the runtimes installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ('onnxruntime', 'openvino', 'ncnn'):
        try:
            found.append(f'{dist} {version(dist)}')
        except PackageNotFoundError:
            pass
    return ''.join(f', {v}' for v in found)


def parse_size(text: str) -> Tuple[int, int]:
    """``'176x320'`` -> (176, 320); ElanError naming ``--size`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ElanError(f'--size {text!r}: expected HEIGHTxWIDTH, e.g. 176x320') from None
    if h < 1 or w < 1:
        raise ElanError(f'--size {text!r}: height and width must be positive')
    return h, w


def run_training(args: argparse.Namespace, device, where: str) -> int:
    """``elan bench --train``: training-step table (and the loader's samples/s with ``--opt``)."""
    from elan_arch.bench import training as bench_train
    from elan_arch.utils.fileio import atomic_path, check_output_free

    if args.batch < 1 or args.patch < 1:
        raise ElanError('--batch and --patch must be positive')
    keys = args.models or TRAIN_MODELS
    if 'elan-light-onnx' in keys:
        raise ElanError('--train: elan-light-onnx has no training step')
    variant = f'{"_" + args.amp if args.amp else ""}{"_compile" if args.compile else ""}'
    md_path = args.output_dir / f'bench_train_{device.type}{variant}_x{args.scale}_b{args.batch}_p{args.patch}.md'
    check_output_free(md_path, args.force)
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    loader = bench_train.loader_throughput(Path(args.opt), args.loader_batches, not args.quiet) if args.opt else None
    models = {key: build_model(key, args.scale) for key in keys}
    results = bench_train.measure_training(models, {k: MODELS[k] for k in keys}, args.batch, args.patch,
                                           args.scale, device, amp, args.runs, args.warmup, not args.quiet,
                                           compile_mode=args.compile)
    compiled = f', forward under torch.compile ({args.compile}) as train.compile' if args.compile else ''
    setup = (f'Training step (forward, L1, backward, Adam) at x{args.scale}, '
             f'batch {args.batch} of {args.patch}x{args.patch} '
             f'LR patches, {where}, {args.amp or "float32"}{compiled}; median of {args.runs} steps after {args.warmup} '
             f'warm-up, models interleaved; torch {torch.__version__}; '
             f'command: `elan bench --train --device {args.device} '
             f'--batch {args.batch} --patch {args.patch}{" --amp " + args.amp if args.amp else ""}'
             f'{f" --compile {args.compile}" if args.compile else ""}'
             f'{f" --threads {args.threads}" if args.threads else ""} --runs {args.runs} --warmup {args.warmup}'
             f'{f" --opt {args.opt}" if args.opt else ""}`')
    table = bench_train.markdown_training(results, args.batch, setup, loader)
    print(table)
    with atomic_path(md_path, overwrite=args.force) as tmp:
        tmp.write_text(table)
    print(f'wrote {md_path}')
    return 1 if any(r.error is not None for r in results) else 0


def _check_network_options(args: argparse.Namespace) -> None:
    """``--weights`` and the network options apply to ``--backends`` only (``--opt`` also to ``--train``'s loader);
    ElanError naming them otherwise. Sets ``args.network_flags`` (how they were given, for the table's command
    line) and the default ``--scale`` (4) where no checkpoint gives it."""
    from elan_arch.cli.options import network_overrides

    told = network_overrides(args)
    flags = [f'--weights {args.weights}'] if args.weights else []
    for key, value in told.items():
        if key == 'shift_windows':
            flags.append('--shift-windows' if value else '--no-shift-windows')
        else:
            flags.append(f'--{key.replace("_", "-")} ' + (' '.join(map(str, value)) if isinstance(value, list) else
                                                          str(value)))
    args.network_flags = ''.join(f'{flag} ' for flag in flags)
    if args.weights and not args.backends:
        raise ElanError('--weights is measured through the runtimes of --backends; add --backends NAME,... (other '
                        'tables measure their models with random weights)')
    describing = [f'--{k.replace("_", "-")}' for k in told if k != 'opt'] + ['--unsafe-load'] * args.unsafe_load
    if not args.weights and (describing or (args.opt and not args.train)):
        raise ElanError(f'{" ".join(describing) or "--opt"} describe(s) a checkpoint: give it with --weights W '
                        '(and --backends)')
    if args.scale is None and not args.weights:
        args.scale = 4


def run(args: argparse.Namespace) -> int:
    from elan_arch.bench.inference import bar_chart, markdown, measure
    from elan_arch.inference.upscale import select_device
    from elan_arch.utils.fileio import atomic_path, check_output_free

    if args.train and args.size is not None:
        raise ElanError(f'--size {args.size} is the input of the inference benchmark; --train times batches of '
                        'square LR patches: use --patch N (default 32) and --batch N (default 8) instead')
    if args.ablation and (args.train or args.models):
        raise ElanError('--ablation measures its own set of models at inference: leave out '
                        f'{"--train" if args.train else "--models"}')
    _check_network_options(args)
    args.size = args.size or (ABLATION_SIZE if args.ablation else DEFAULT_SIZE)
    size = parse_size(args.size)
    if args.runs < 1 or args.warmup < 0:
        raise ElanError('--runs must be >= 1 and --warmup >= 0')
    device, dtype = select_device(args.device, args.half)
    if args.threads:
        torch.set_num_threads(args.threads)
    fused = [key for key in args.models or () if key.endswith('-fused')]
    reason = window_kernels.unavailable_reason(device, interpreter_ok=False) if fused else None
    if reason:
        raise ElanError(f'--models {" ".join(fused)}: cannot run the fused attention kernels: {reason}')
    if device.type == 'cuda':
        where = torch.cuda.get_device_name(device)
    else:
        where = f'CPU ({cpu_tuning.cpu_name()}), {torch.get_num_threads()} threads'
    if args.backends:
        return run_backends(args, size, where)
    if args.train:
        return run_training(args, device, where)
    args.models = ABLATION_MODELS if args.ablation else args.models or [
        key for key in MODELS if key not in OPTIONAL_MODELS]
    stem = (f'bench_{"ablation_" if args.ablation else ""}{device.type}{"_half" if args.half else ""}'
            f'_x{args.scale}_{size[0]}x{size[1]}')
    md_path, png_path = args.output_dir / f'{stem}.md', args.output_dir / f'{stem}.png'
    for path in (md_path, png_path):
        check_output_free(path, args.force)
    ablation = (f'ablation variants of ELAN-light, each on the reference arithmetic; {datetime.date.today()}; '
                if args.ablation else '')
    setup = (f'{ablation}x{args.scale}, LR input {size[0]}x{size[1]}, batch 1, {where}, '
             f'{"float16" if args.half else "float32"}{f", torch.compile ({args.compile})" if args.compile else ""}; '
             f'median of {args.runs} runs after {args.warmup} warm-up; torch {torch.__version__}; '
             f'command: `elan bench{" --ablation" if args.ablation else ""} --scale {args.scale} --size {args.size} '
             f'--device {args.device}'
             f'{" --half" if args.half else ""}{f" --compile {args.compile}" if args.compile else ""}'
             f'{f" --threads {args.threads}" if args.threads else ""} --runs {args.runs} --warmup {args.warmup}`')
    results = measure(args.models, args.scale, size, device, dtype, args.compile, args.runs, args.warmup,
                      progress=not args.quiet)
    table = markdown(results, setup, ABLATION_REFERENCE if args.ablation else None)
    print(table)
    with atomic_path(md_path, overwrite=args.force) as tmp:
        tmp.write_text(table)
    with atomic_path(png_path, overwrite=args.force) as tmp:
        bar_chart(results, f'x{args.scale}, {size[0]}x{size[1]} LR, {where}', tmp)
    print(f'wrote {md_path} and {png_path}')
    return 1 if any(r.error is not None for r in results) else 0
