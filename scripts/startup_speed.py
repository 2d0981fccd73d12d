"""Start-up of the ``elan`` command against its floor, on an idle CPU and with a second job on it
(docs/performance.md, "Start-up").

Measured in one run, interleaved round by round, each a fresh process timed from outside (wall clock):

- ``elan --help``;
- ``elan upscale`` of a 64x64 PNG with an ELAN-light x4 checkpoint (random weights, BasicSR's format);
- the floor: ``python -c "import torch, basicsr"`` (the torchvision alias applied first), and, in a process of
  its own, the first forward of the same network on the same image (the inference itself).

With ``--base DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base <commit>``) the two
commands also run from that tree (``python -m elan_arch`` with ``PYTHONPATH=DIR``), so before and after come
from the same run. The second job is a Python process spinning on one core. The commands choose their OpenMP
wait policy as they would for a user (no ``OMP_WAIT_POLICY`` in their environment).

Usage: python scripts/startup_speed.py [--rounds 5] [--base DIR]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
ALIAS = ("import importlib, sys; sys.modules['torchvision.transforms.functional_tensor'] = "
         "importlib.import_module('torchvision.transforms._functional_tensor'); ")
FORWARD = ('import time, torch, elan_arch; from elan_arch.archs import ELAN; import cv2; '
           'net = ELAN(upscale=4).eval(); net.load_state_dict(torch.load(sys.argv[1])["params"]); '
           'img = cv2.imread(sys.argv[2]); x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255; '
           't = time.perf_counter()\nwith torch.inference_mode(): net(x)\nprint(time.perf_counter() - t)')


def environment(tree: Optional[Path]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'ELAN_WAIT_POLICY_CHECKED')}
    if tree is not None:
        env['PYTHONPATH'] = str(tree)
    return env


def timed(argv: List[str], env: Dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--base', type=Path, help='a checkout of the commit to compare with')
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch

    import elan_arch  # noqa: F401
    from elan_arch.archs import ELAN

    work = Path(tempfile.mkdtemp(prefix='startup_speed_'))
    weights, image = work / 'net_g.pth', work / 'in.png'
    torch.save({'params': ELAN(upscale=4).state_dict()}, weights)
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    trees = {'after': None, **({'before': args.base} if args.base else {})}
    commands = {}
    for label, tree in trees.items():
        commands[f'elan --help ({label})'] = ([sys.executable, '-m', 'elan_arch', '--help'], tree)
        commands[f'elan upscale 64x64 ({label})'] = ([sys.executable, '-m', 'elan_arch', 'upscale', '-i', str(image),
                                                     '-o', str(work / f'out_{label}.png'), '--weights', str(weights),
                                                     '--force'], tree)
    commands['python -c "import torch, basicsr"'] = ([sys.executable, '-c', ALIAS + 'import torch, basicsr'], None)
    times: Dict[str, Dict[str, List[float]]] = {}
    for load in ('idle', 'second job'):
        spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass']) if load == 'second job' else None
        try:
            time.sleep(0.5)
            for _ in range(args.rounds):
                for name, (argv, tree) in commands.items():
                    times.setdefault(load, {}).setdefault(name, []).append(timed(argv, environment(tree), work))
                out = subprocess.run([sys.executable, '-c', ALIAS + FORWARD, str(weights), str(image)],
                                     env=environment(None), check=True, capture_output=True, text=True).stdout
                times[load].setdefault('first forward, 64x64 (in-process)', []).append(float(out.split()[-1]))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    print(f'Start-up, median of {args.rounds} rounds, interleaved; {date.today()}; torch {torch.__version__}; '
          f'command: `python scripts/startup_speed.py --rounds {args.rounds}{" --base DIR" if args.base else ""}`\n')
    print('| command | ' + ' | '.join(times) + ' |\n|---|' + '---:|' * len(times))
    for name in times['idle']:
        print(f'| {name} | ' + ' | '.join(f'{statistics.median(times[load][name]):.2f} s' for load in times) + ' |')
    for load, by_name in times.items():
        floor = statistics.median(by_name['python -c "import torch, basicsr"']) + statistics.median(
            by_name['first forward, 64x64 (in-process)'])
        for label in trees:
            ratio = statistics.median(by_name[f'elan upscale 64x64 ({label})']) / floor
            print(f'{load}: elan upscale ({label}) / (import torch, basicsr + first forward) = {ratio:.2f}')


if __name__ == '__main__':
    main()
