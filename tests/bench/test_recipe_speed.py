"""scripts/recipe_speed.py: the seconds per iteration it derives from BasicSR's running means, its variants,
and one real (tiny) run through ``basicsr train`` on LMDB crops made by ``prepare_div2k``."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from helpers.train import REPO, demo_root

spec = importlib.util.spec_from_file_location('recipe_speed', REPO / 'scripts' / 'recipe_speed.py')
recipe_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_speed)


def log_line(iteration: int, time: float, data: float) -> str:
    return (f'2026-11-27 10:00:00,000 INFO: [ELAN_..][epoch:  0, iter: {iteration:8,d}, lr:(2.000e-04,)] '
            f'[eta: 0:00:09, time (data): {time:.3f} ({data:.3f})] l_pix: 5.3612e+00 \n')


def test_seconds_per_iteration_between_two_running_means():
    # iterations 1-20 took 0.5 s each, 21-80 took 0.2 s: running means 0.5 at 20, 0.275 at 80
    log = log_line(10, 0.5, 0.1) + log_line(20, 0.5, 0.1) + log_line(80, (20 * 0.5 + 60 * 0.2) / 80, 0.04)
    speed, data = recipe_speed.seconds_per_iteration(log, warmup=20)
    assert speed == pytest.approx(0.2) and data == pytest.approx((80 * 0.04 - 20 * 0.1) / 60)
    assert recipe_speed.seconds_per_iteration(log_line(20, 0.5, 0.1), warmup=20) is None


def test_variants_and_overrides():
    assert recipe_speed.variant_overrides('bf16+compile+fast') == [
        'train:amp=bf16', 'train:compile=true', 'network_g:fast_training=true']
    with pytest.raises(ValueError, match="unknown word 'tf32'"):
        recipe_speed.variant_overrides('tf32')
    opt = recipe_speed.apply_overrides({'datasets': {'train': {'gt_size': 256}}},
                                       ['datasets:train:gt_size=64', 'train:amp=~'])
    assert opt == {'datasets': {'train': {'gt_size': 64}}, 'train': {'amp': None}}


@pytest.mark.slow
def test_a_tiny_run_through_basicsr_train(tmp_path, monkeypatch):
    root = demo_root(tmp_path)
    monkeypatch.chdir(root)
    argv = ['--options', str(REPO / 'options' / 'train_ELAN_light_x4.yml'), '--variants', 'ref', '--iters', '6',
            '--warmup', '2', '--print-freq', '2', '--root', 'speed', '--reference-gpus', '1',
            '--set', 'network_g:m_elan=2', 'datasets:train:gt_size=64', 'datasets:train:batch_size_per_gpu=2',
            'datasets:train:num_worker_per_gpu=0']
    assert recipe_speed.main(argv) == 0
    table = (root / 'speed' / 'recipe_speed.md').read_text()
    row = [line for line in table.splitlines() if 'train_ELAN_light_x4.yml' in line]
    assert len(row) == 1 and '| ref | 2 | 64 |' in row[0] and 'exit 0' in row[0]
    assert float(row[0].split('|')[5]) > 0  # seconds per iteration
    assert (root / 'speed' / 'DIV2K_train_HR_sub.lmdb').is_dir()
    assert not (Path('experiments') / 'recipe_speed_train_ELAN_light_x4_ref').exists()  # cleaned up
