#!/usr/bin/env python
"""Seconds per iteration of the paper recipes through ``basicsr train``, data loading included
(a script, not a test: on a GPU it takes a few minutes; ``scripts/gpu_session.sh`` runs it).

1. Training data the DIV2K way: ``elan prepare div2k`` (480-pixel crops every 240, LMDB) of the demo
   photos (``elan prepare demo`` first if ``datasets/demo`` is missing), under ``--root``.
2. For each option file and variant, ``basicsr train -opt <file> --force_yml ...`` for ``--iters``
   iterations on one device: the option file's recipe with the data pointed at those LMDBs, the total
   batch of the reference on one device (``batch_size_per_gpu`` x ``--reference-gpus``), the demo's
   held-out photos as validation set, validation only at the end. A variant is ``+``-joined words:
   ``fp32`` (the default arithmetic; TF32 where cuDNN enables it), ``bf16`` / ``fp16`` (``train.amp``),
   ``compile`` (``train.compile: true``), ``fast`` / ``ref`` (``network_g.fast_training: true / false``),
   ``fused`` (``network_g.fused_attention: true``: the fast path with fused attention kernels, CUDA).
3. BasicSR logs the running mean of the iteration time; the seconds per iteration between the first
   log line at or after ``--warmup`` and the last one are ``(b * T_b - a * T_a) / (b - a)``.

Prints a markdown table (and writes it, with the training logs, under ``--root``).
Usage: ``python scripts/recipe_speed.py [--iters 100] [--variants fp32 bf16 fp32+compile]``.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

LOG_LINE = re.compile(r'iter:\s*([\d,]+),.*?time \(data\): ([\d.]+) \(([\d.]+)\)')
WORDS = {'fp32': [], 'bf16': ['train:amp=bf16'], 'fp16': ['train:amp=fp16'], 'compile': ['train:compile=true'],
         'fast': ['network_g:fast_training=true'], 'ref': ['network_g:fast_training=false'],
         'fused': ['network_g:fused_attention=true']}


def variant_overrides(variant: str) -> List[str]:
    """``--force_yml`` entries of a ``+``-joined variant; ``ValueError`` naming an unknown word."""
    overrides: List[str] = []
    for word in variant.split('+'):
        if word not in WORDS:
            raise ValueError(f'variant {variant!r}: unknown word {word!r} (known: {", ".join(WORDS)})')
        overrides += WORDS[word]
    return overrides


def seconds_per_iteration(log: str, warmup: int) -> Optional[Tuple[float, float]]:
    """(s / iteration, data s / iteration) between the first log point at or after ``warmup`` and the
    last, from BasicSR's running means; None if the log has fewer than two such points."""
    points = [(int(m.group(1).replace(',', '')), float(m.group(2)), float(m.group(3))) for m in LOG_LINE.finditer(log)]
    points = [p for p in points if p[0] >= warmup]
    if len(points) < 2:
        return None
    (a, ta, da), (b, tb, db) = points[0], points[-1]
    return (b * tb - a * ta) / (b - a), (b * db - a * da) / (b - a)


def prepare_data(root: Path, demo: Path) -> Tuple[Path, Path]:
    """The x4 LMDB pair of 480-pixel crops of the demo photos under ``root`` (built once)."""
    import elan_arch  # noqa: F401  (before basicsr)
    from elan_arch.prepare import prepare_div2k
    from elan_arch.demo.run import ensure_demo_data

    ensure_demo_data(demo)
    gt, lq = root / 'DIV2K_train_HR_sub.lmdb', root / 'DIV2K_train_LR_bicubic_X4_sub.lmdb'
    if not (gt.exists() and lq.exists()):
        root.mkdir(parents=True, exist_ok=True)
        print(prepare_div2k(demo, output=root, scales=(4, ), force=True, progress=False), flush=True)
    return gt, lq


def apply_overrides(opt: dict, entries: Sequence[str]) -> dict:
    """``opt`` with ``key:key=value`` entries applied (values read as YAML), as ``--force_yml`` does."""
    for entry in entries:
        keys, value = entry.split('=', 1)
        node = opt
        *parents, last = keys.split(':')
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = yaml.safe_load(value)
    return opt


def run(option: Path, variant: str, args: argparse.Namespace, gt: Path, lq: Path, demo: Path) -> Dict[str, object]:
    """One ``basicsr train`` run; its figures."""
    with open(option, encoding='utf-8') as handle:
        opt = yaml.safe_load(handle)
    batch = int(opt['datasets']['train']['batch_size_per_gpu']) * args.reference_gpus
    reported = apply_overrides(opt, [f'datasets:train:batch_size_per_gpu={batch}', *args.set])['datasets']['train']
    name = f'recipe_speed_{option.stem}_{variant.replace("+", "_")}'
    overrides = [f'name={name}', f'train:total_iter={args.iters}', 'val:val_freq=1000000000',
                 f'logger:print_freq={args.print_freq}', 'logger:save_checkpoint_freq=1000000000',
                 'logger:use_tb_logger=false',
                 f'datasets:train:dataroot_gt={gt}', f'datasets:train:dataroot_lq={lq}',
                 f'datasets:train:batch_size_per_gpu={batch}', 'datasets:train:dataset_enlarge_ratio=1000',
                 f'datasets:val:dataroot_gt={demo / "val" / "GTmod12"}',
                 f'datasets:val:dataroot_lq={demo / "val" / "LRbicx4"}',
                 'datasets:val:io_backend:type=disk', *variant_overrides(variant), *args.set]
    command = [sys.executable, '-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', str(option),
               '--force_yml', *overrides]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        output, status = proc.stdout + proc.stderr, str(proc.returncode)
    except subprocess.TimeoutExpired as err:
        output, status = (err.stdout or b'').decode() + (err.stderr or b'').decode(), f'timeout {args.timeout} s'
    wall = time.perf_counter() - start
    (args.root / f'{name}.log').write_text(output)
    for folder in (Path('experiments') / name, Path('tb_logger') / name):
        shutil.rmtree(folder, ignore_errors=True)
    speed = seconds_per_iteration(output, args.warmup)
    total = int(opt['train']['total_iter'])
    return {'option': option.name, 'variant': variant, 'batch': reported['batch_size_per_gpu'],
            'patch': reported['gt_size'],
            'status': status, 'wall': wall, 'speed': speed, 'total_iter': total}


def table(rows: Sequence[Dict[str, object]]) -> str:
    lines = ['| option file | variant | total batch | HR patch | s / iteration | data s / iteration | whole schedule '
             '| run |',
             '|---|---|---:|---:|---:|---:|---:|---|']
    for r in rows:
        speed = r['speed']
        if speed is None:
            cells = 'n/a | n/a | n/a'
        else:
            hours = speed[0] * int(r['total_iter']) / 3600
            cells = f'{speed[0]:.3f} | {speed[1]:.3f} | {int(r["total_iter"]):,} it: {hours:.0f} h'
        lines.append(f'| {r["option"]} | {r["variant"]} | {r["batch"]} | {r["patch"]} | {cells} | '
                     f'exit {r["status"]}, {r["wall"]:.0f} s |')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--options', nargs='+', type=Path,
                        default=[Path('options/train_ELAN_light_x4.yml'), Path('options/train_ELAN_x4.yml')])
    parser.add_argument('--variants', nargs='+', default=['fp32', 'bf16', 'fp32+compile', 'bf16+compile'])
    parser.add_argument('--iters', type=int, default=100, help='iterations per run (default: 100)')
    parser.add_argument('--warmup', type=int, default=20, help='iterations left out of the figure (default: 20)')
    parser.add_argument('--print-freq', type=int, default=20, help='BasicSR log interval (default: 20)')
    parser.add_argument('--reference-gpus', type=int, default=4,
                        help='GPUs of the reference run: batch_size_per_gpu is multiplied by it (default: 4)')
    parser.add_argument('--root', type=Path, default=Path('datasets/recipe_speed'), help='data, logs and table')
    parser.add_argument('--demo', type=Path, default=Path('datasets/demo'), help='the demo dataset (built if missing)')
    parser.add_argument('--timeout', type=int, default=900, help='seconds per run (default: 900)')
    parser.add_argument('--set', nargs='*', default=[], help='more --force_yml entries for every run')
    args = parser.parse_args(argv)
    try:
        for variant in args.variants:
            variant_overrides(variant)  # fail before any work on a bad variant
    except ValueError as err:
        parser.error(str(err))
    if args.warmup >= args.iters:
        parser.error(f'--warmup {args.warmup} must be below --iters {args.iters}')
    gt, lq = prepare_data(args.root, args.demo)
    rows = []
    for option in args.options:
        for variant in args.variants:
            rows.append(run(option, variant, args, gt, lq, args.demo))
            print(table(rows[-1:]).split('\n')[-1], flush=True)
    text = table(rows)
    (args.root / 'recipe_speed.md').write_text(text + '\n')
    print('\n' + text)
    return 0 if all(r['speed'] is not None for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
