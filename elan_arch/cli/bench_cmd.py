"""``elan bench``: parameters, FLOPs, latency and peak memory of ELAN next to SwinIR-light and EDSR.

All models are measured in one run on the same input: FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` with the formulas it lacks for the fast path's CPU
operators (:mod:`~elan_arch.flops`; 2 per multiply-add, on what the model actually executes),
latency as the median of ``--runs`` forwards after ``--warmup`` ones, the models interleaved
round by round so that background load affects them alike, and peak memory of one forward
(CUDA: ``max_memory_allocated``; CPU: growth of the process's peak resident memory, reset through
``/proc/self/clear_refs``).
"""
from __future__ import annotations

import argparse
import platform
import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from elan_arch.archs import window_kernels
from elan_arch.archs.elan_blocks import pad_to_multiple
from elan_arch.bench_train import interleaved_times, report_failure
from elan_arch.utils.errors import ElanError

#: ``--models`` keys -> table names; the order is the table's.
MODELS: Dict[str, str] = {
    'elan-light': 'ELAN-light',
    'elan-light-ref': 'ELAN-light (reference path)',
    'elan': 'ELAN',
    'elan-ref': 'ELAN (reference path)',
    'elan-light-fused': 'ELAN-light (fused attention)',
    'elan-fused': 'ELAN (fused attention)',
    'elan-light-onnx': 'ELAN-light (onnxruntime)',
    'swinir-light': 'SwinIR-light',
    'edsr': 'EDSR-baseline',
}
BASELINE = 'swinir-light'
#: Measured only when named in ``--models``: the ONNX export needs an extra (``pip install 'elan-arch[onnx]'``),
#: ELAN's reference arithmetic is slow to wait for, the fused attention kernels need CUDA (``ELAN.fused_attention``).
OPTIONAL_MODELS = ('elan-light-onnx', 'elan-ref', 'elan-light-fused', 'elan-fused')
#: ``--train``'s default models.
TRAIN_MODELS = ['elan-light', 'elan-light-ref', 'elan', 'elan-ref', 'swinir-light']


@dataclass
class Result:
    """Measurements of one model."""
    key: str
    params: int
    flops: int
    latencies: List[float]
    peak_mib: Optional[float]
    error: Optional[str] = None

    @property
    def name(self) -> str:
        return MODELS[self.key]

    @property
    def latency(self) -> float:
        return statistics.median(self.latencies)


def register(subparsers: argparse._SubParsersAction) -> None:
    from elan_arch.cli.options import add_device_options

    parser = subparsers.add_parser(
        'bench', help='speed/size of ELAN vs SwinIR-light and EDSR (markdown table + PNG chart)',
        description='Measure parameters, FLOPs, median latency and peak memory of ELAN-light and ELAN (fast '
        'inference path, and ELAN-light on the reference arithmetic) next to BasicSR\'s SwinIR in its light '
        'configuration and the EDSR baseline, in one run on one random input; random weights (speed does not '
        'depend on them). Prints a markdown table and writes it with a bar chart.')
    parser.add_argument('--scale', type=int, default=4, help='upscale factor (default: 4)')
    parser.add_argument('--size', default='176x320', help='LR input HxW (default: 176x320, i.e. 704x1280 output at x4)')
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
    train.add_argument('--opt', type=Path, help='also measure the data loader of this option file\'s training set')
    train.add_argument('--loader-batches', type=int, default=20, help='batches the loader is timed on (default: 20)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def parse_size(text: str) -> Tuple[int, int]:
    """``'176x320'`` -> (176, 320); ElanError naming ``--size`` otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ElanError(f'--size {text!r}: expected HEIGHTxWIDTH, e.g. 176x320') from None
    if h < 1 or w < 1:
        raise ElanError(f'--size {text!r}: height and width must be positive')
    return h, w


def build_model(key: str, scale: int):
    """A freshly initialised model for a :data:`MODELS` key, in eval mode.

    BasicSR's SwinIR needs sizes that are multiples of its window (8); it is wrapped to
    reflect-pad and crop, as SwinIR's own test script does.
    """
    from basicsr.archs.edsr_arch import EDSR
    from basicsr.archs.swinir_arch import SwinIR

    from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS

    if key == 'elan-light-onnx':
        from elan_arch.deploy.onnx_runtime import OnnxRuntimeModule

        net = OnnxRuntimeModule(ELAN(upscale=scale, **ELAN_VARIANTS['ELAN-light']).eval())
    elif key.startswith('elan'):
        net = ELAN(upscale=scale, **ELAN_VARIANTS['ELAN-light' if key.startswith('elan-light') else 'ELAN'])
        net.fast_inference = net.fast_training = not key.endswith('-ref')
        net.fused_attention = key.endswith('-fused')
    elif key == 'swinir-light':
        net = PadToMultiple(SwinIR(upscale=scale, in_chans=3, img_size=64, window_size=8, img_range=1.,
                                   depths=[6, 6, 6, 6], embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2,
                                   upsampler='pixelshuffledirect', resi_connection='1conv'), multiple=8, scale=scale)
    else:
        net = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=scale, res_scale=1)
    return net.eval()


class PadToMultiple(torch.nn.Module):
    """Reflect-pad the input to a multiple of ``multiple``, run ``net``, crop its output.

    In float16/bfloat16 ``net`` runs under autocast: BasicSR's SwinIR builds its shifted-window
    attention mask in float32, so with half weights ``attn + mask`` turns float32 and the next
    matrix product fails on mixed dtypes; autocast runs such products in the half dtype.

    Shape: (B, C, H, W) -> (B, C, H*scale, W*scale).
    """

    def __init__(self, net: torch.nn.Module, multiple: int, scale: int) -> None:
        super().__init__()
        self.net, self.multiple, self.scale = net, multiple, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        half = x.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast(x.device.type, dtype=x.dtype, enabled=half):
            y = self.net(pad_to_multiple(x, self.multiple))
        return y[..., :h * self.scale, :w * self.scale].to(x.dtype)


def _vm_kib(field: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise OSError(f'{field} not in /proc/self/status')


def peak_memory_mib(forward: Callable[[], object], device) -> Optional[float]:
    """Peak memory one call of ``forward`` adds (MiB), or None where it cannot be measured."""
    import torch

    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        base = _vm_kib('VmRSS')
        with open('/proc/self/clear_refs', 'w') as clear:
            clear.write('5')  # reset the peak resident set size (VmHWM) to the current one
        forward()
        return (_vm_kib('VmHWM') - base) / 1024
    except OSError:
        return None


def measure(keys: List[str], scale: int, size: Tuple[int, int], device, dtype, compile_mode: Optional[str],
            runs: int, warmup: int, progress: bool) -> List[Result]:
    """Build every model, count its FLOPs and peak memory, then time them round-robin. A model that fails
    (out of memory, a kernel that does not build here) keeps its error and is left out of later rounds."""
    import torch
    from tqdm import tqdm

    from elan_arch.flops import count_flops
    from elan_arch.inference.upscale import compile_network

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    calls: Dict[str, Callable[[], None]] = {}
    results = []

    def forward(net) -> None:
        net(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    with torch.inference_mode(), tqdm(total=len(keys) * (2 + warmup + runs), unit='forward',
                                      disable=not progress) as bar:
        for key in keys:
            net = build_model(key, scale).to(device, dtype)
            result = Result(key, sum(p.numel() for p in net.parameters()), 0, [], None)
            results.append(result)
            try:
                result.flops = count_flops(partial(net, x))
                ready = compile_network(net, compile_mode)
                result.peak_mib = peak_memory_mib(partial(forward, ready), device)
                calls[key] = partial(forward, ready)
            except Exception as error:  # noqa: BLE001 (reported in the table; the other models go on)
                result.error = report_failure('elan bench', result.name, error, device)
                bar.update(warmup + runs)  # the rounds it will not run
            bar.update(2)
        times, errors = interleaved_times(calls, {r.key: r.name for r in results}, warmup, runs, device,
                                          'elan bench', bar)
    for result in results:
        if result.error is None:
            result.latencies, result.error = times[result.key], errors.get(result.key)
    return results


def markdown(results: List[Result], setup: str) -> str:
    """The results as a markdown table (with the set-up line above it)."""
    base = next((r for r in results if r.key == BASELINE), None)
    lines = [setup, '',
             '| model | params | GFLOPs | latency (ms, median) | speed-up vs SwinIR-light | peak memory (MiB) |',
             '|---|---:|---:|---:|---:|---:|']
    for r in results:
        if r.error is not None:
            lines.append(f'| {r.name} | {r.params:,} | n/a | failed: {r.error} | n/a | n/a |')
            continue
        ratio = f'{base.latency / r.latency:.2f}x' if base and base.error is None else 'n/a'
        peak = f'{r.peak_mib:.0f}' if r.peak_mib is not None else 'n/a'
        gflops = f'{r.flops / 1e9:.1f}' if r.flops else 'n/a'  # onnxruntime's work is invisible to PyTorch
        lines.append(f'| {r.name} | {r.params:,} | {gflops} | {r.latency * 1e3:.0f} '
                     f'(min {min(r.latencies) * 1e3:.0f}) | {ratio} | {peak} |')
    return '\n'.join(lines) + '\n'


def bar_chart(results: List[Result], title: str, path: Path) -> None:
    """Three bar panels (latency, GFLOPs, parameters) of the models that ran, written to ``path`` as PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    results = [r for r in results if r.error is None]
    names = [r.name.replace(' (reference path)', '\n(reference path)') for r in results]
    panels = [('latency (ms, median)', [r.latency * 1e3 for r in results]),
              ('GFLOPs', [r.flops / 1e9 for r in results]),
              ('parameters (K)', [r.params / 1e3 for r in results])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.6 * len(results) + 1.8))
    for ax, (label, values) in zip(axes, panels):
        bars = ax.barh(names, values, color=['tab:orange' if r.key.startswith('elan') else 'tab:blue'
                                             for r in results])
        ax.bar_label(bars, fmt='%.0f', padding=2)
        ax.set_xlabel(label)
        ax.invert_yaxis()
        ax.margins(x=0.2)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format='png', dpi=100)
    plt.close(fig)


def run_training(args: argparse.Namespace, device, where: str) -> int:
    """``elan bench --train``: training-step table (and the loader's samples/s with ``--opt``)."""
    from elan_arch import bench_train
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
    loader = bench_train.loader_throughput(args.opt, args.loader_batches, not args.quiet) if args.opt else None
    models = {key: build_model(key, args.scale) for key in keys}
    results = bench_train.measure_training(models, {k: MODELS[k] for k in keys}, args.batch, args.patch,
                                           args.scale, device, amp, args.runs, args.warmup, not args.quiet,
                                           compile_mode=args.compile)
    compiled = f', forward under torch.compile ({args.compile}) as train.compile' if args.compile else ''
    setup = (f'Training step (forward, L1, backward, Adam) at x{args.scale}, batch {args.batch} of {args.patch}x{args.patch} '
             f'LR patches, {where}, {args.amp or "float32"}{compiled}; median of {args.runs} steps after {args.warmup} '
             f'warm-up, models interleaved; torch {torch.__version__}; command: `elan bench --train --device {args.device} '
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


def run(args: argparse.Namespace) -> int:
    import torch

    from elan_arch.utils.fileio import atomic_path, check_output_free
    from elan_arch.inference.upscale import select_device

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
        where = f'CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads'
    if args.train:
        return run_training(args, device, where)
    args.models = args.models or [key for key in MODELS if key not in OPTIONAL_MODELS]
    stem = f'bench_{device.type}{"_half" if args.half else ""}_x{args.scale}_{size[0]}x{size[1]}'
    md_path, png_path = args.output_dir / f'{stem}.md', args.output_dir / f'{stem}.png'
    for path in (md_path, png_path):
        check_output_free(path, args.force)
    setup = (f'x{args.scale}, LR input {size[0]}x{size[1]}, batch 1, {where}, '
             f'{"float16" if args.half else "float32"}{f", torch.compile ({args.compile})" if args.compile else ""}; '
             f'median of {args.runs} runs after {args.warmup} warm-up; torch {torch.__version__}; '
             f'command: `elan bench --scale {args.scale} --size {args.size} --device {args.device}'
             f'{" --half" if args.half else ""}{f" --compile {args.compile}" if args.compile else ""}'
             f'{f" --threads {args.threads}" if args.threads else ""} --runs {args.runs} --warmup {args.warmup}`')
    results = measure(args.models, args.scale, size, device, dtype, args.compile, args.runs, args.warmup,
                      progress=not args.quiet)
    table = markdown(results, setup)
    print(table)
    with atomic_path(md_path, overwrite=args.force) as tmp:
        tmp.write_text(table)
    with atomic_path(png_path, overwrite=args.force) as tmp:
        bar_chart(results, f'x{args.scale}, {size[0]}x{size[1]} LR, {where}', tmp)
    print(f'wrote {md_path} and {png_path}')
    return 1 if any(r.error is not None for r in results) else 0
