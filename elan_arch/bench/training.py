"""``elan bench --train``: training-step speed of ELAN (fast path and reference arithmetic) next to
SwinIR-light, and the data loader's speed for an option file's training set.

One training step is what ``ELANModel.optimize_parameters`` does: forward (under autocast with
``--amp``), L1 loss, backward, Adam step. The models are timed round-robin, the median of
``--runs`` steps after ``--warmup`` ones, so that background load affects them alike. Each network's
FLOPs per step are counted once on its reference arithmetic (:func:`step_flops`), so that the table
can say how much arithmetic per second each path achieves on the same work. A model whose step
fails (out of memory at a large batch, a kernel that does not build on this GPU) is reported in its row and
left out of the later rounds; the others are still measured.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from elan_arch.utils.errors import ElanError, one_line


@dataclass
class TrainResult:
    """Step times (s) of one model, or the error that stopped it."""
    key: str
    name: str
    params: int
    times: List[float]
    error: Optional[str] = None
    flops: Optional[int] = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def random_batch(batch: int, patch: int, scale: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed random (LR, HR) batch every step is timed and counted on: ``batch`` LR ``patch`` crops in
    [0, 1] and their ``scale``-times larger targets (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, patch, patch, generator=gen).to(device)
    gt = torch.rand(batch, 3, patch * scale, patch * scale, generator=gen).to(device)
    return lq, gt


def make_step(net: torch.nn.Module, batch: int, patch: int, scale: int, device: torch.device,
              amp: Optional[torch.dtype]) -> Callable[[], None]:
    """A closure running one training step of ``net`` on a fixed random batch of LR ``patch`` crops."""
    lq, gt = random_batch(batch, patch, scale, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = net(lq)
        F.l1_loss(out.float(), gt).mul(255.).backward()
        optimizer.step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    return step


def _reference_arithmetic(net: torch.nn.Module) -> Dict[str, Any]:
    """Switch an ELAN to its reference arithmetic; returns the attributes to restore (none for other nets)."""
    saved = {name: getattr(net, name) for name in ('fast_training', 'fused_attention') if hasattr(net, name)}
    for name in saved:
        setattr(net, name, False)
    return saved


def step_flops(net: torch.nn.Module, batch: int, patch: int, scale: int, device: torch.device) -> int:
    """FLOPs (2 per multiply-add, :func:`~elan_arch.bench.flops.count_flops`) of one forward + L1 + backward of
    ``net`` on ``batch`` random LR ``patch`` crops, in float32, on the reference arithmetic for an ELAN: the
    work a step has to do whichever path does it, so that FLOPs / step time compares the paths (as a
    model-FLOPs utilisation does; the fast path executes a little more, e.g. BatchNorm's statistics from a
    covariance product, and the counter misses its in-place products and fused kernels). No gradient is
    left behind; BatchNorm statistics see one more batch."""
    from elan_arch.bench.flops import count_flops

    lq, gt = random_batch(batch, patch, scale, device)
    saved = _reference_arithmetic(net)
    try:
        return count_flops(lambda: F.l1_loss(net(lq), gt).backward())
    finally:
        for name, value in saved.items():
            setattr(net, name, value)
        net.zero_grad(set_to_none=True)


def report_failure(command: str, name: str, error: Exception, device: torch.device) -> str:
    """Say (under the progress bars) that ``name`` failed, empty the GPU's cache of what it held, and return
    the error in one line for its table row (:func:`~elan_arch.utils.errors.one_line`)."""
    from tqdm import tqdm

    described = one_line(error)
    tqdm.write(f'{command}: {name} failed: {described}')
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return described


def interleaved_times(calls: Dict[str, Callable[[], None]], names: Dict[str, str], warmup: int, runs: int,
                      device: torch.device, command: str, bar: Any,
                      release: Optional[Callable[[str], None]] = None) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Run every call of ``calls`` round by round, ``warmup`` rounds and then ``runs`` timed ones, advancing
    ``bar`` (tqdm) once per call and round. A call that raises is removed from ``calls`` (freeing what it
    holds), ``release(key)`` frees what else it used, it is reported (:func:`report_failure`) and skipped
    afterwards, so the others are still measured (this bench's and ``elan bench``'s inference rounds).

    Returns:
        Seconds per key of the timed rounds (none for a failed call), and per failed key its error in one
        line (:func:`~elan_arch.utils.errors.one_line`).
    """
    times: Dict[str, List[float]] = {key: [] for key in calls}
    errors: Dict[str, str] = {}
    for round_ in range(warmup + runs):
        for key in times:
            bar.update()
            if key in errors:
                continue
            start = time.perf_counter()
            try:
                calls[key]()
            except Exception as error:  # noqa: BLE001 (reported in the table; the other models go on)
                del calls[key]
                if release is not None:
                    release(key)
                errors[key], times[key] = report_failure(command, names[key], error, device), []
                continue
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    return times, errors


def measure_training(models: Dict[str, torch.nn.Module], names: Dict[str, str], batch: int, patch: int,
                     scale: int, device: torch.device, amp: Optional[torch.dtype], runs: int, warmup: int,
                     progress: bool, compile_mode: Optional[str] = None) -> List[TrainResult]:
    """Median training-step time of every model, interleaved round by round, and the FLOPs of its step
    (:func:`step_flops`, once per network: ``-ref`` and ``-fused`` variants share their network's count;
    None where counting failed, e.g. out of memory, which the timed steps then report themselves). With
    ``compile_mode`` each step's forward runs ``torch.compile``-d in that mode, as ``train.compile`` does (the
    warm-up steps compile it)."""
    from tqdm import tqdm

    from elan_arch.inference.upscale import compile_network

    steps, results, counted = {}, [], {}
    for key, net in tqdm(models.items(), unit='model', disable=not progress, desc='counting FLOPs'):
        net.to(device).train()
        network = key.removesuffix('-fused').removesuffix('-ref')
        if network not in counted:
            try:
                counted[network] = step_flops(net, batch, patch, scale, device)
            except Exception:  # noqa: BLE001 (the step itself will fail and be reported)
                counted[network] = None
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
        steps[key] = make_step(compile_network(net, compile_mode), batch, patch, scale, device, amp)
        results.append(TrainResult(key, names[key], sum(p.numel() for p in net.parameters() if p.requires_grad), [],
                                   flops=counted[network]))
    with tqdm(total=len(models) * (warmup + runs), unit='step', disable=not progress, desc='training steps') as bar:
        times, errors = interleaved_times(steps, names, warmup, runs, device, 'elan bench --train', bar,
                                          release=lambda key: models[key].to('cpu'))
    for result in results:
        result.times, result.error = times[result.key], errors.get(result.key)
    return results


def loader_throughput(option_file: Path, batches: int, progress: bool) -> Dict[str, Any]:
    """Samples/s of the training set of ``option_file`` through BasicSR's dataset and a DataLoader with the
    option file's batch size and workers (first batch, which starts the workers, not counted)."""
    import yaml
    from tqdm import tqdm

    from basicsr.data import build_dataset

    if not option_file.is_file():
        raise ElanError(f'--opt {option_file}: no such option file')
    with open(option_file, encoding='utf-8') as handle:
        opt = yaml.safe_load(handle)
    try:
        train_opt = dict(opt['datasets']['train'], phase='train', scale=opt['scale'])
    except (KeyError, TypeError):
        raise ElanError(f'{option_file}: no datasets.train section (and top-level scale)') from None
    dataset = build_dataset(train_opt)
    batch, workers = int(train_opt['batch_size_per_gpu']), int(train_opt.get('num_worker_per_gpu', 0))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=False)
    if len(loader) < 2:
        raise ElanError(f'{option_file}: the training set has fewer than 2 batches of {batch}')
    batches = min(batches, len(loader) - 1)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in tqdm(range(batches), unit='batch', disable=not progress, desc='data loader'):
        next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    return {'samples_per_s': batches * batch / seconds, 'batch': batch, 'workers': workers, 'batches': batches,
            'gt_size': train_opt.get('gt_size'), 'name': train_opt.get('name')}


def markdown_training(results: List[TrainResult], batch: int, setup: str,
                      loader: Optional[Dict[str, Any]]) -> str:
    """The results as a markdown table, with the loader's throughput under it. GFLOP per step: forward and
    backward on the reference arithmetic (:func:`step_flops`); TFLOP/s: that over the median step."""
    by_key = {r.key: r for r in results}
    lines = [setup, '', '| model | trainable params | GFLOP per step | step (ms, median) | samples/s | TFLOP/s '
             '| speed-up vs its reference arithmetic |', '|---|---:|---:|---:|---:|---:|---:|']
    for r in results:
        gflop = f'{r.flops / 1e9:.1f}' if r.flops else 'n/a'
        if r.error is not None:
            lines.append(f'| {r.name} | {r.params:,} | {gflop} | failed: {r.error} | n/a | n/a | n/a |')
            continue
        ref = by_key.get(f'{r.key.removesuffix("-fused")}-ref')
        ratio = f'{ref.median / r.median:.2f}x' if ref is not None and ref.error is None else 'n/a'
        rate = f'{r.flops / r.median / 1e12:.3g}' if r.flops else 'n/a'
        lines.append(f'| {r.name} | {r.params:,} | {gflop} | {r.median * 1e3:.0f} (min {min(r.times) * 1e3:.0f}) | '
                     f'{batch / r.median:.1f} | {rate} | {ratio} |')
    if loader:
        lines += ['', f'Data loader ({loader["name"]}, HR patch {loader["gt_size"]}, batch {loader["batch"]}, '
                  f'{loader["workers"]} worker{"s" if loader["workers"] != 1 else ""}, {loader["batches"]} batches): '
                  f'**{loader["samples_per_s"]:.1f} samples/s**']
    return '\n'.join(lines) + '\n'
