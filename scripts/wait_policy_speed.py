"""Seconds per iteration of ``basicsr train`` on the demo option under both OpenMP wait policies, on an idle
CPU and with a second training job on it (docs/performance.md, "OpenMP waiting on a shared CPU").

Four conditions, interleaved round by round so that a change in the machine's speed affects them alike:
{idle, a competing job} x {OpenMP's default (threads spin a while), OMP_WAIT_POLICY=PASSIVE}. The
competing job is another ``basicsr train`` of the same option with OpenMP's default, started before the
two loaded runs of a round and stopped after them. A run trains ``--iters`` iterations of
``options/train_ELAN_light_x4_demo.yml`` (the demo's ELAN-light x4, batch 8 of 128-pixel HR patches,
torch's default threads); its seconds per iteration come from the time stamps of basicsr's log lines,
from the third logged iteration to the last. The commands are told not to choose a policy themselves
(``ELAN_WAIT_POLICY_CHECKED=1``). The CPU's busy share is sampled (half a second) before each run.

Usage: python scripts/wait_policy_speed.py [--iters 8] [--rounds 2] [--root DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
OPTION = str(REPO / 'options' / 'train_ELAN_light_x4_demo.yml')
LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO: \[.*iter:\s*([\d,]+),')


def environment(policy: Optional[str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS')}
    env.update(ELAN_WAIT_POLICY_CHECKED='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    if policy:
        env['OMP_WAIT_POLICY'] = policy
    return env


def command(name: str, iters: int) -> List[str]:
    return [sys.executable, '-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', OPTION, '--force_yml', f'name={name}',
            f'train:total_iter={iters}', f'train:scheduler:periods=[{iters}]', 'logger:print_freq=1',
            f'logger:save_checkpoint_freq={iters}', 'val=~', 'logger:use_tb_logger=false',
            'datasets:train:num_worker_per_gpu=1']


def seconds_per_iteration(output: str) -> float:
    stamps = [(int(m.group(2).replace(',', '')), datetime.strptime(m.group(1), '%Y-%m-%d %H:%M:%S,%f'))
              for m in map(LINE.match, output.splitlines()) if m]
    stamps = [s for s in stamps if s[0] >= 3]
    if len(stamps) < 2:
        raise RuntimeError('too few iterations logged:\n' + output[-3000:])
    (first, t0), (last, t1) = stamps[0], stamps[-1]
    return (t1 - t0).total_seconds() / (last - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=8, help='iterations per run (default 8)')
    parser.add_argument('--rounds', type=int, default=2, help='rounds of the four conditions (default 2)')
    parser.add_argument('--root', type=Path, help='working folder with datasets/demo (default: a new temporary one)')
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix='wait_policy_'))
    import elan_arch  # noqa: F401  (before basicsr)
    from elan_arch.prepare import prepare_demo
    from elan_arch.utils.cpu_tuning import cpu_load

    if not (root / 'datasets' / 'demo').is_dir():
        prepare_demo(root / 'datasets' / 'demo', scales=(4, ), workers=1, progress=False)
    results: Dict[str, List[float]] = {}
    for round_ in range(args.rounds):
        for loaded in (False, True):
            rival = None
            if loaded:
                rival = subprocess.Popen(command('rival', 100000), cwd=root, env=environment(None),
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(15)  # past its start-up, training
            try:
                for policy in (None, 'PASSIVE'):
                    label = f'{"with a second job" if loaded else "idle"}, {policy or "default"}'
                    load = cpu_load(0.5)
                    run = subprocess.run(command('measured', args.iters), cwd=root, env=environment(policy),
                                         capture_output=True, text=True, timeout=3600)
                    value = seconds_per_iteration(run.stdout + run.stderr)
                    results.setdefault(label, []).append(value)
                    print(f'round {round_ + 1}: {label}: {value:.2f} s/iteration (CPU {100 * (load or 0):.0f}% busy '
                          'before)', flush=True)
            finally:
                if rival is not None:
                    rival.kill()
                    rival.wait()
    print('\n| condition | s/iteration (median) | runs |\n|---|---|---|')
    for label, values in results.items():
        print(f'| {label} | {statistics.median(values):.2f} | {", ".join(f"{v:.2f}" for v in values)} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
