"""bfloat16 against float32 on the CPU, ELAN-light x4 through PyTorch (``elan upscale --bf16``) on real photos.

For each photo of scikit-image (astronaut, coffee, chelsea, rocket, immunohistochemistry; a 176x320 crop), the
network with BatchNorm statistics measured on the photos (no trained weights can be downloaded here) upscales it
in float32 and in bfloat16; prints the max and mean difference of the 8-bit outputs, then the latency of both,
interleaved round by round (median and min of ``--runs``). Usage: ``python scripts/bf16_cpu_check.py --threads 2``.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import skimage.data
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.bench.backends import calibrate
from elan_arch.inference.backends import bf16_unsupported_reason, torch_backend
from elan_arch.utils.cpu_tuning import tune_process

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry')


def crop(name: str, h: int = 176, w: int = 320) -> torch.Tensor:
    img = getattr(skimage.data, name)()[:h, :w].astype(np.float32) / 255.
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()
    reason = bf16_unsupported_reason()
    if reason:
        raise SystemExit(f'bfloat16: {reason}')
    tune_process()  # as the elan commands: subnormals flushed, malloc thresholds
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    photos = {name: crop(name) for name in PHOTOS}
    net = calibrate(ELAN(upscale=4, **ELAN_VARIANTS['ELAN-light']), torch.cat(list(photos.values())))
    f32 = torch_backend(net, torch.device('cpu'), torch.float32).net
    bf16 = torch_backend(copy.deepcopy(net), torch.device('cpu'), torch.bfloat16).net
    print(f'CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads')
    with torch.inference_mode():
        for name, x in photos.items():
            a = (f32(x).clamp(0, 1) * 255).round()
            b = (bf16(x.bfloat16()).float().clamp(0, 1) * 255).round()
            d = (a - b).abs()
            print(f'{name:22s} max {int(d.max())} levels, mean {d.mean():.3f} levels, '
                  f'{(d > 1).float().mean() * 100:.2f}% of values off by more than one')
        x = photos['astronaut']
        times = {'float32': [], 'bfloat16': []}
        calls = {'float32': lambda: f32(x), 'bfloat16': lambda: bf16(x.bfloat16())}
        for fn in calls.values():
            fn()
        for _ in range(args.runs):
            for key, fn in calls.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    for key, t in times.items():
        print(f'{key:9s} median {statistics.median(t) * 1e3:.0f} ms (min {min(t) * 1e3:.0f})')
    print(f'bfloat16 speed-up: {statistics.median(times["float32"]) / statistics.median(times["bfloat16"]):.2f}x '
          f'(min: {min(times["float32"]) / min(times["bfloat16"]):.2f}x)')


if __name__ == '__main__':
    main()
