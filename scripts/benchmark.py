#!/usr/bin/env python
"""The benchmark behind the inference figures of docs/performance.md (a script, not a test: it takes minutes).

1. ``elan bench``: ELAN-light / ELAN (fast path), ELAN-light on the reference arithmetic,
   BasicSR's SwinIR-light and EDSR baseline, x4 on a 176x320 LR input, in one run.
2. Peak resident memory and time of ``elan upscale`` (ELAN-light x4) on a 2000x2000
   photo with 128 and 256 tiles, against whole-image runs on smaller inputs.
   On CUDA also the peak GPU memory (``torch.cuda.max_memory_allocated``) of whole and tiled
   upscaling, in this process.
3. Agreement of tiled (default tile and overlap) and whole-image outputs on a real photo.
4. Throughput of ``elan upscale`` on a folder (``--folder COUNT HxW``: by default 100 photos of 480x640 on
   CUDA, 8 of 180x240 on the CPU): images/s and where the time goes, each image in turn
   (``--io-threads 0``) against the pipeline (decoding and PNG encoding in background threads).

Usage: ``python scripts/benchmark.py [--device cuda] [--half] [--threads 2] [--output-dir docs/bench]``.
Writes ``<output-dir>/bench_<device>[_half]_x4_176x320.md/.png`` (step 1, by ``elan bench``),
``<output-dir>/upscale_<device>[_half].md`` (steps 2 and 3) and ``<output-dir>/folder_<device>[_half].md``
(step 4).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import skimage.data
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN
from elan_arch.cli import main as elan_main
from elan_arch.inference.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array
from elan_arch.inference.pipeline import default_writers

#: The summary line ``elan upscale`` ends a run with.
THROUGHPUT = re.compile(r'([\d.]+) s: ([\d.]+) images/s, ([\d.]+) output megapixels/s; network ([\d.]+) s, '
                        r'waiting ([\d.]+) s for reading and ([\d.]+) s for writing')

# Run in a fresh interpreter: its RUSAGE_CHILDREN peak is then that of this one command.
_PEAK_WRAPPER = ('import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; '
                 'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)')


def photo(size: int) -> np.ndarray:
    """scikit-image's astronaut photograph resized to size x size (uint8 BGR)."""
    return cv2.resize(skimage.data.astronaut()[:, :, ::-1], (size, size), interpolation=cv2.INTER_CUBIC)


def photo_rgb(size: int) -> np.ndarray:
    """:func:`photo` as ``upscale_array`` takes it: (size, size, 3) float32 RGB in [0, 1]."""
    return photo(size)[:, :, ::-1].astype(np.float32) / 255.


def calibrated_elan_light(img: np.ndarray) -> ELAN:
    """ELAN-light x4 with random weights and BatchNorm statistics measured on ``img`` (as training leaves them)."""
    torch.manual_seed(0)
    net = ELAN(upscale=4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)) / 255.).float()[None])
    return net.eval()


def peak_rss_mib(cmd: List[str], threads: int) -> Tuple[float, float]:
    """(peak resident memory in MiB, wall seconds) of a command run to completion on ``threads`` threads."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, '-c', _PEAK_WRAPPER, *cmd], capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(cmd)} failed:\n{proc.stderr}')
    return int(proc.stdout.split()[-1]) / 1024, time.perf_counter() - start


def upscale_memory(args: argparse.Namespace, work: Path, weights: Path) -> str:
    """Markdown table: peak memory of ``elan upscale`` by input size and tile."""
    rows = ['| input | tile | peak resident memory (MiB) | wall time (s) |', '|---|---|---:|---:|']
    runs = [(64, 0), (500, 0), (1000, 0), (2000, 128), (2000, DEFAULT_TILE)]  # 64x64: the process's own base
    for size, tile in runs:
        src = work / f'in_{size}.png'
        if not src.exists():
            cv2.imwrite(str(src), photo(size))
        cmd = ['elan', 'upscale', '-i', str(src), '-o', str(work / f'out_{size}_{tile}.png'), '--weights',
               str(weights), '--device', args.device, '--quiet', '--force']
        cmd += ['--half'] if args.half else []
        cmd += ['--tile', str(tile)] if tile else []
        peak, seconds = peak_rss_mib(cmd, args.threads)
        rows.append(f'| {size}x{size} | {tile or "none (whole image)"} | {peak:.0f} | {seconds:.0f} |')
        print(rows[-1], flush=True)
    return '\n'.join(rows) + '\n'


def upscale_gpu_memory(net: ELAN, device: torch.device, dtype: torch.dtype) -> str:
    """Markdown table: peak GPU memory and time of whole and tiled upscaling (CUDA only)."""
    rows = ['| input | tile | peak GPU memory (MiB) | time (s) |', '|---|---|---:|---:|']
    net = net.to(device, dtype)
    upscale_array(net, photo_rgb(64), 4, net.pad_multiple)  # warm-up
    for size, tile in [(500, 0), (1000, 0), (2000, 0), (2000, 128), (2000, DEFAULT_TILE), (4000, DEFAULT_TILE)]:
        img = photo_rgb(size)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            upscale_array(net, img, 4, net.pad_multiple, tile=tile)
            torch.cuda.synchronize(device)
            peak = f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f}'
        except torch.cuda.OutOfMemoryError:
            peak = 'out of memory'
        rows.append(f'| {size}x{size} | {tile or "none (whole image)"} | {peak} | {time.perf_counter() - start:.2f} |')
        print(rows[-1], flush=True)
    net.to('cpu', torch.float32)
    return '\n'.join(rows) + '\n'


def tiling_agreement(net: ELAN, size: int = 512) -> str:
    """Markdown line: PSNR of the tiled (default tile/overlap) against the whole-image output."""
    img = photo_rgb(size)
    whole = upscale_array(net, img, 4, net.pad_multiple).astype(np.float64)
    tiled = upscale_array(net, img, 4, net.pad_multiple, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP)
    psnr = 10 * np.log10(255.**2 / np.mean((whole - tiled)**2))
    return (f'Tiled (tile {DEFAULT_TILE}, overlap {DEFAULT_OVERLAP}) against whole-image output, ELAN-light x4 on '
            f'the {size}x{size} astronaut photo (8-bit outputs): {psnr:.1f} dB PSNR.\n')


def folder_photos(folder: Path, count: int, height: int, width: int) -> None:
    """``count`` PNGs of ``height`` x ``width``: crops of scikit-image's photographs in turn, resized."""
    sources = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        img = sources[k % len(sources)]
        top, left = (k // len(sources)) % 8 * img.shape[0] // 32, (k // len(sources)) % 5 * img.shape[1] // 20
        crop = img[top:top + img.shape[0] * 3 // 4, left:left + img.shape[1] * 3 // 4, ::-1]
        cv2.imwrite(str(folder / f'{k:04d}.png'), cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA))


def folder_throughput(args: argparse.Namespace, work: Path, weights: Path) -> str:
    """Markdown table: ``elan upscale`` of a folder in turn (``--io-threads 0``) and pipelined, after a warm-up."""
    count, (height, width) = int(args.folder[0]), (int(v) for v in args.folder[1].lower().split('x'))
    folder_photos(work / 'folder', count, height, width)
    folder_photos(work / 'warmup', 2, height, width)
    base = ['upscale', '--weights', str(weights), '--device', args.device, '--quiet', '--force']
    base += ['--half'] if args.half else []
    elan_main(base + ['-i', str(work / 'warmup'), '-o', str(work / 'warmup_out')])
    rows = ['| run | wall (s) | images/s | output megapixels/s | network (s) | waiting for reading (s) '
            '| waiting for writing (s) |', '|---|---:|---:|---:|---:|---:|---:|']
    writers = default_writers()
    for name, threads in (('in turn (`--io-threads 0`)', 0),
                          (f'pipelined (`--io-threads {writers}`)', writers)):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = elan_main(base + ['-i', str(work / 'folder'), '-o', str(work / f'out_{threads}'),
                                     '--io-threads', str(threads)])
        found = THROUGHPUT.search(printed.getvalue())
        if code != 0 or found is None:
            raise SystemExit(f'elan upscale failed ({code}):\n{printed.getvalue()}')
        rows.append(f'| {name} | ' + ' | '.join(found.groups()) + ' |')
        print(rows[-1], flush=True)
    half = ' --half' if args.half else ''
    return (f'`elan upscale` of a folder of {count} photos of {height}x{width} (scikit-image crops) with '
            f'ELAN-light x4 (random weights, BatchNorm statistics from a photo), device {args.device}{half}, '
            f'{os.cpu_count()} CPU cores; torch {torch.__version__}; command: `python scripts/benchmark.py '
            f'--device {args.device}{half} --folder {count} {args.folder[1]} --skip-bench --skip-upscale`\n\n'
            + '\n'.join(rows) + '\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--half', action='store_true')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (default: 2)')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--output-dir', type=Path, default=Path('docs/bench'))
    parser.add_argument('--skip-bench', action='store_true', help='leave out step 1')
    parser.add_argument('--skip-upscale', action='store_true', help='leave out steps 2 and 3')
    parser.add_argument('--folder', nargs=2, metavar=('COUNT', 'HxW'),
                        help='step 4\'s folder (default: 100 480x640 on CUDA, 8 180x240 on the CPU)')
    parser.add_argument('--skip-folder', action='store_true', help='leave out step 4')
    args = parser.parse_args()
    args.folder = args.folder or (['100', '480x640'] if args.device.startswith('cuda') else ['8', '180x240'])
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_bench:  # writes bench_<device>[_half]_x4_176x320.md/.png itself
        bench = ['elan', 'bench', '--scale', '4', '--size', '176x320', '--device', args.device, '--runs',
                 str(args.runs), '--warmup', '1', '--output-dir', str(args.output_dir), '--force', '--quiet']
        bench += ['--half'] if args.half else []
        bench += ['--threads', str(args.threads)] if args.device == 'cpu' else []
        subprocess.run(bench, check=True)
    if not args.skip_upscale:
        tag = f'{torch.device(args.device).type}{"_half" if args.half else ""}'
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            net = calibrated_elan_light(photo(512))
            torch.save({'params': net.state_dict()}, work / 'elan_light_x4.pth')
            report = ['`elan upscale` with ELAN-light x4 (random weights, BatchNorm statistics from a photo), '
                      f'{args.threads} CPU threads, device {args.device}{", half" if args.half else ""}; '
                      f'command: `python scripts/benchmark.py --device {args.device}'
                      f'{" --half" if args.half else ""} --threads {args.threads} --skip-bench`\n',
                      upscale_memory(args, work, work / 'elan_light_x4.pth'), '', tiling_agreement(net)]
            if torch.device(args.device).type == 'cuda':
                gpu = torch.cuda.get_device_name()
                report += ['', f'Peak GPU memory of the same upscaling in this process ({gpu}):\n',
                           upscale_gpu_memory(net, torch.device(args.device),
                                              torch.float16 if args.half else torch.float32)]
        out = args.output_dir / f'upscale_{tag}.md'
        out.write_text('\n'.join(report))
        print(f'wrote {out}')
    if not args.skip_folder:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            torch.save({'params': calibrated_elan_light(photo(512)).state_dict()}, work / 'elan_light_x4.pth')
            table = folder_throughput(args, work, work / 'elan_light_x4.pth')
        out = args.output_dir / f'folder_{torch.device(args.device).type}{"_half" if args.half else ""}.md'
        out.write_text(table)
        print(table)
        print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
