"""``elan bench``: parameters, FLOPs, latency and peak memory of ELAN next to SwinIR-light and EDSR.

All models are measured in one run on the same input: FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` with the formulas it lacks for the fast path's CPU
operators (:mod:`~elan_arch.bench.flops`; 2 per multiply-add, on what the model actually executes),
latency as the median of ``runs`` forwards after ``warmup`` ones, the models interleaved
round by round so that background load affects them alike, and peak memory of one forward
(CUDA: ``max_memory_allocated``; CPU: growth of the process's peak resident memory, reset through
``/proc/self/clear_refs``).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from elan_arch.bench.models import BASELINE, MODELS, build_model
from elan_arch.bench.training import interleaved_times, report_failure


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


def _vm_kib(field: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise OSError(f'{field} not in /proc/self/status')


def peak_memory_mib(forward: Callable[[], object], device) -> Optional[float]:
    """Peak memory one call of ``forward`` adds (MiB), or None where it cannot be measured."""
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
    from tqdm import tqdm

    from elan_arch.bench.flops import count_flops
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


def markdown(results: List[Result], setup: str, second_baseline: Optional[str] = None) -> str:
    """The results as a markdown table (with the set-up line above it). ``second_baseline``: a
    :data:`~elan_arch.bench.models.MODELS` key whose speed-up column follows SwinIR-light's."""
    def speed_up(key: Optional[str], r: Result) -> str:
        base = next((b for b in results if b.key == key), None)
        return f'{base.latency / r.latency:.2f}x' if base and base.error is None else 'n/a'

    second = f' speed-up vs {MODELS[second_baseline]} |' if second_baseline else ''
    lines = [setup, '',
             f'| model | params | GFLOPs | latency (ms, median) | speed-up vs SwinIR-light |{second} '
             'peak memory (MiB) |',
             '|---|---:|---:|---:|---:|' + ('---:|' if second_baseline else '') + '---:|']
    for r in results:
        if r.error is not None:
            lines.append(f'| {r.name} | {r.params:,} | n/a | failed: {r.error} | n/a |'
                         f'{" n/a |" if second_baseline else ""} n/a |')
            continue
        ratio = speed_up(BASELINE, r) + (f' | {speed_up(second_baseline, r)}' if second_baseline else '')
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
