"""Checkpoints carry their network (elan_arch/models/saving.py, elan_arch/deploy/checkpoint.py and option_files.py).

ELAN's tensors cannot tell its window sizes or shifted windows. Networks trained by ``basicsr train`` (a few
iterations on three photos) must come out of every reader, ``elan upscale``, ``elan export`` + ``elan upscale
--onnx``, ``elan convert`` and spandrel, as ``basicsr test`` runs them; a checkpoint without the record must
take the network from its run folder's option file, or say what it assumed.

Tolerance: 8-bit outputs agree within one level. Every path computes the same function in float32 (orders of
summation differ: about 1e-6 relative; onnxruntime within the export's own check of 1e-4), far below half a
level (2e-3 on [0, 1]), so rounding to 8 bits can move a value across at most one boundary. The same weights
built with the reference's windows and shifts differ by more than 2 levels (checked, so the comparisons can
fail; these barely trained networks differ by 6 to 85 levels).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple

import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.models.sr_model import SRModel
from elan_arch.archs.elan_arch import ELAN, ELAN_ABLATIONS
from elan_arch.cli import main
from elan_arch.deploy.checkpoint import complete, load_checkpoint, network_record
from elan_arch.deploy.option_files import forced_entries, run_network_g
from elan_arch.models import saving
from elan_arch.training.network_checks import pretrained_mismatch
from elan_arch.utils.errors import ElanError
from helpers.networks import randomize
from helpers.train import TEST_ENV, ok, run_python

#: ELAN-light with two ELABs (the second shifts its windows): the variant, not the depth, is tested.
LIGHT = dict(c_elan=60, m_elan=4, n_share=1, r_expand=2, window_sizes=[4, 8, 16])
CASES = {f'{name}_x4': (4, {**LIGHT, **variant, 'm_elan': 2 * (1 + variant.get('n_share', 1))})
         for name, variant in ELAN_ABLATIONS.items()}
CASES.update({f'light_x{s}': (s, LIGHT) for s in (2, 3, 4)})
CASES['elan_x4'] = (4, dict(c_elan=180, m_elan=2, n_share=0, r_expand=2, window_sizes=[4, 8, 16]))
#: What runs in the default suite (the rest is @slow): the demo's case, window sizes given by --force_yml.
FAST = ('window8_x4',)
BARE_LINE = ('assumed window_sizes [4, 8, 16] and shifted windows: the weights cannot tell; pass --window-sizes / '
             '--no-shift-windows or --opt FILE if the network was trained otherwise')


class Run(NamedTuple):
    weights: Path  # experiments/<name>/models/net_g_latest.pth
    option: Path  # the option file BasicSR copied beside the run
    lr: Path  # the test photo's LR PNG
    reference: np.ndarray  # basicsr test's output of it (uint8 RGB)
    scale: int
    network: Dict[str, Any]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def _photos(root: Path) -> None:
    """Two 96x96 training photos and one 96x120 test photo (divisible by 2, 3, 4), LR by bicubic per scale."""
    crops = {'train/hr/a.png': skimage.data.astronaut()[100:196, 180:276],
             'train/hr/b.png': skimage.data.coffee()[150:246, 200:296],
             'test/hr/c.png': skimage.data.chelsea()[60:156, 130:250]}
    for rel, rgb in crops.items():
        hr = Image.fromarray(rgb)
        for scale in (2, 3, 4):
            lr = root / rel.replace('/hr/', f'/x{scale}/')
            lr.parent.mkdir(parents=True, exist_ok=True)
            hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC).save(lr)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        hr.save(root / rel)


def _options(root: Path, name: str, scale: int, network: Dict[str, Any]) -> Dict[str, Any]:
    """A 2-iteration ELANModel training on the photos (EMA on, so files hold params and params_ema)."""
    return {
        'name': name, 'model_type': 'ELANModel', 'scale': scale, 'num_gpu': 0, 'manual_seed': 10,
        'datasets': {'train': {
            'name': 'photos', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'train/hr'),
            'dataroot_lq': str(root / f'train/x{scale}'), 'io_backend': {'type': 'disk'}, 'filename_tmpl': '{}',
            'gt_size': 48, 'use_hflip': False, 'use_rot': False, 'batch_size_per_gpu': 2, 'num_worker_per_gpu': 0,
            'dataset_enlarge_ratio': 1, 'prefetch_mode': None}},
        'network_g': {'type': 'ELAN', 'upscale': scale, **network},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.5, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.999]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 2,
                  'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False}}


def _train_and_test(root: Path, case: str) -> Run:
    """``basicsr train`` then ``basicsr test`` of ``case`` in ``root``. The window8 case is trained as the demo's
    ``--variant window8`` is: the option file has the default windows and ``--force_yml`` sets [8]."""
    scale, network = CASES[case]
    name = f'records_{case}'
    train_opt = _options(root, name, scale, network)
    forced = []
    if case == 'window8_x4':
        train_opt['network_g']['window_sizes'] = [4, 8, 16]
        forced = ['--force_yml', 'network_g:window_sizes=[8]']
    option = root / f'train_{name}.yml'
    option.write_text(yaml.safe_dump(train_opt, sort_keys=False))
    ok(run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'train', '-opt', str(option), *forced], root, TEST_ENV))
    weights = root / 'experiments' / name / 'models' / 'net_g_latest.pth'
    test_set = {'name': 'photo', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                'dataroot_gt': str(root / 'test/hr'), 'dataroot_lq': str(root / f'test/x{scale}')}
    test_opt = {'name': f'test_{name}', 'model_type': 'ELANModel', 'scale': scale, 'num_gpu': 0, 'manual_seed': 10,
                'datasets': {'test_1': test_set},
                'network_g': {'type': 'ELAN', 'upscale': scale, **network},
                'path': {'pretrain_network_g': str(weights), 'param_key_g': 'params_ema', 'strict_load_g': True},
                'val': {'save_img': True, 'suffix': None}}
    test_file = root / f'test_{name}.yml'
    test_file.write_text(yaml.safe_dump(test_opt, sort_keys=False))
    ok(run_python(['-m', 'elan_arch.cli.basicsr_cmd', 'test', '-opt', str(test_file)], root, TEST_ENV))
    output, = (root / 'results' / f'test_{name}' / 'visualization' / 'photo').glob('c_*.png')
    return Run(weights, root / 'experiments' / name / option.name, root / f'test/x{scale}/c.png', _png(output), scale,
               {'type': 'ELAN', 'upscale': scale, **network})


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> Callable[[str], Run]:
    """Each case trained and tested once per module, on demand."""
    root = tmp_path_factory.mktemp('records')
    _photos(root)
    done: Dict[str, Run] = {}

    def get(case: str) -> Run:
        if case not in done:
            done[case] = _train_and_test(root, case)
        return done[case]

    return get


def _levels(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def _upscale(run: Run, out: Path, *args: str) -> np.ndarray:
    assert main(['upscale', '-i', str(run.lr), '-o', str(out), '--device', 'cpu', '--quiet', *args]) == 0
    return _png(out)


def _cases():
    return [pytest.param(case, marks=() if case in FAST else pytest.mark.slow) for case in CASES]


@pytest.mark.parametrize('case', _cases())
def test_every_reader_runs_the_trained_network_as_basicsr_test_does(case, runs, tmp_path, capsys):
    import onnx
    import spandrel

    import elan_arch.spandrel_support  # noqa: F401

    run = runs(case)
    saved = torch.load(run.weights, weights_only=True)
    assert set(saved) == {'params', 'params_ema', 'network_g'}
    assert saved['network_g'] == {'type': 'ELAN', **complete(run.network)}

    assert _levels(_upscale(run, tmp_path / 'pth.png', '--weights', str(run.weights)), run.reference) <= 1
    assert main(['export', str(run.weights), str(tmp_path / 'net.onnx')]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / 'net.onnx')).metadata_props}
    assert yaml.safe_load(meta['elan.network_g']) == saved['network_g']
    assert _levels(_upscale(run, tmp_path / 'onnx.png', '--onnx', str(tmp_path / 'net.onnx')), run.reference) <= 1
    for converted in ('net.safetensors', 'net.pth'):
        assert main(['convert', str(run.weights), str(tmp_path / converted)]) == 0
        assert load_checkpoint(str(tmp_path / converted), announce=pytest.fail)[1] == complete(run.network)
        out = _upscale(run, tmp_path / f'{converted}.png', '--weights', str(tmp_path / converted))
        assert _levels(out, run.reference) <= 1
    model = spandrel.ModelLoader().load_from_file(run.weights)
    lr = torch.from_numpy(_png(run.lr).transpose(2, 0, 1).copy()).float()[None] / 255
    with torch.no_grad():
        out = (model(lr)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert _levels(out, run.reference) <= 1
    assert 'assumed' not in capsys.readouterr().err  # every reader read the record

    # the comparisons can fail: the reference's windows and shifts give another output
    sd = saved['params_ema']
    wrong = {**complete(run.network), 'window_sizes': [4, 8, 16], 'shift_windows': True}
    if wrong != complete(run.network):
        net = ELAN(**wrong).eval()
        net.load_state_dict(sd)
        with torch.no_grad():
            other = (net(lr)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert _levels(other, run.reference) > 2


def _without_record(src: Path, dst: Path) -> Path:
    saved = torch.load(src, weights_only=True)
    del saved['network_g']
    torch.save(saved, dst)
    return dst


def test_a_run_folder_checkpoint_without_record_takes_the_copied_option_file(runs, tmp_path, capsys):
    run = runs('window8_x4')
    older = _without_record(run.weights, run.weights.parent / 'net_g_older.pth')
    try:
        assert _levels(_upscale(run, tmp_path / 'out.png', '--weights', str(older)), run.reference) <= 1
        err = capsys.readouterr().err
        assert f'the network of {run.option} (the run\'s option file; the checkpoint records none)' in err
        assert 'assumed' not in err
        # the copy holds the default windows; [8] came from the --force_yml it recorded
        assert yaml.safe_load(run.option.read_text())['network_g']['window_sizes'] == [4, 8, 16]
    finally:
        older.unlink()


def test_a_bare_checkpoint_says_what_it_assumed_and_the_options_correct_it(runs, tmp_path, capsys):
    run = runs('window8_x4')
    bare = _without_record(run.weights, tmp_path / 'ELAN_window8_x4.pth')
    assert _levels(_upscale(run, tmp_path / 'assumed.png', '--weights', str(bare)), run.reference) > 2
    assert capsys.readouterr().err.strip() == f'elan: {bare}: {BARE_LINE}'
    told = _upscale(run, tmp_path / 'told.png', '--weights', str(bare), '--window-sizes', '8', '--shift-windows')
    assert _levels(told, run.reference) <= 1 and capsys.readouterr().err == ''
    from_opt = _upscale(run, tmp_path / 'opt.png', '--weights', str(bare), '--opt', str(run.option))
    assert _levels(from_opt, run.reference) <= 1 and capsys.readouterr().err == ''
    # the other readers take the same options
    assert main(['export', str(bare), str(tmp_path / 'w8.onnx'), '--window-sizes', '8', '--shift-windows']) == 0
    assert _levels(_upscale(run, tmp_path / 'onnx.png', '--onnx', str(tmp_path / 'w8.onnx')), run.reference) <= 1
    assert main(['convert', str(bare), str(tmp_path / 'w8.pth'), '--opt', str(run.option)]) == 0
    assert torch.load(tmp_path / 'w8.pth', weights_only=True)['network_g']['window_sizes'] == [8]
    bench = ['bench', '--backends', 'torch', '--weights', str(bare), '--size', '16x24', '--runs', '1', '--warmup', '0',
             '--output-dir', str(tmp_path), '--quiet']
    assert main([*bench, '--window-sizes', '8', '--shift-windows']) == 0
    table = (tmp_path / 'bench_backends_cpu_x4_16x24.md').read_text()
    assert f'ELAN (custom) ({bare}) x4' in table and '--window-sizes 8 --shift-windows --scale 4' in table
    assert 'assumed' not in capsys.readouterr().err
    assert main([*bench, '--force']) == 0 and BARE_LINE in capsys.readouterr().err
    assert main(['bench', '--window-sizes', '8']) == 2
    assert 'describe(s) a checkpoint: give it with --weights W' in capsys.readouterr().err


# --- the record itself: cheap checks on untrained networks ---------------------------------------------------

def _net(**options: Any) -> ELAN:
    return randomize(ELAN(**{**LIGHT, **options}), weight_std=0.05).eval()


def test_basicsr_load_network_ignores_the_record_in_both_strict_modes(tmp_path):
    net = _net(window_sizes=[8], shift_windows=False)
    path = tmp_path / 'net_g.pth'
    torch.save({'params': net.state_dict(), 'network_g': network_record(net)}, path)
    for strict in (True, False):
        opt = {'is_train': False, 'num_gpu': 0, 'dist': False, 'network_g': network_record(net),
               'path': {'pretrain_network_g': str(path), 'strict_load_g': strict, 'param_key_g': 'params'}}
        model = SRModel(opt)
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.net_g.state_dict().items())
    assert ELAN(**{k: v for k, v in network_record(net).items() if k != 'type'}).window_sizes == [8]


def test_the_record_holds_every_option_and_rebuilds_the_same_network():
    net = _net(upscale=3, colors=1, lfe='conv3x3', window_sizes=[16], shift_windows=False, img_range=1.,
               rgb_mean=[0.25])
    record = network_record(net)
    assert record == {'type': 'ELAN', 'upscale': 3, 'colors': 1, 'c_elan': 60, 'm_elan': 4, 'n_share': 1,
                      'r_expand': 2, 'window_sizes': [16], 'img_range': 1.0, 'rgb_mean': [0.25], 'lfe': 'conv3x3',
                      'attention': 'asa', 'shift_windows': False}
    assert yaml.safe_load(yaml.safe_dump(record)) == record  # plain data, as an option file holds it


class _Model:
    """What ``save_network`` uses of a BasicSR model."""

    def __init__(self, models: Path) -> None:
        self.opt = {'rank': 0, 'path': {'models': str(models)}}

    def get_bare_model(self, net):
        return net


def test_save_network_records_an_elan_and_nothing_for_other_networks(tmp_path):
    from basicsr.archs.edsr_arch import EDSR

    net = _net(window_sizes=[4])
    saving.save_network(_Model(tmp_path), [net, net], 'net_g', -1, ['params', 'params_ema'])
    saved = torch.load(tmp_path / 'net_g_latest.pth', weights_only=True)
    assert list(saved) == ['params', 'params_ema', 'network_g'] and saved['network_g'] == network_record(net)
    saving.save_network(_Model(tmp_path), EDSR(3, 3, 8, 1), 'net_d', 5)
    assert list(torch.load(tmp_path / 'net_d_5.pth', weights_only=True)) == ['params']


@pytest.mark.parametrize('change,message', [
    ({'upscale': 2}, "upscale 2 there, 4 in the weights"),
    ({'attention': 'sa'}, "attention 'sa' there, 'asa' in the weights"),
    ({'img_range': 1.0}, r'img_range 1 with rgb_mean \[0.4488, 0.4371, 0.404\] there'),
    ({'rgb_mean': None}, r'no mean shift there \(rgb_mean: ~\), one in the weights'),
])
def test_a_record_that_contradicts_the_tensors_is_refused(tmp_path, change, message):
    net = _net()
    path = tmp_path / 'odd.pth'
    torch.save({'params': net.state_dict(), 'network_g': {**network_record(net), **change}}, path)
    with pytest.raises(ElanError, match=rf'odd.pth: its network_g record does not describe these weights: {message}'):
        load_checkpoint(str(path))


def test_the_start_up_check_compares_the_recorded_windows_with_network_g(tmp_path):
    net = _net(window_sizes=[8])
    path = tmp_path / 'net_g.pth'
    loaded = {'params': net.state_dict(), 'network_g': network_record(net)}
    opt = {'network_g': {'type': 'ELAN', **LIGHT}, 'path': {'pretrain_network_g': str(path), 'strict_load_g': True}}
    mismatch = pretrained_mismatch(opt, 'pretrain_network_g', loaded)
    assert 'window_sizes [8] in its network_g record, [4, 8, 16] configured' in mismatch
    opt['network_g']['window_sizes'] = [8]
    assert pretrained_mismatch(opt, 'pretrain_network_g', loaded) is None


def test_the_copied_option_file_gets_the_recorded_force_yml_entries(tmp_path):
    head = ('# GENERATE TIME: Sun Dec  6 19:17:33 2026\n# CMD:\n# basicsr train -opt options/x.yml --launcher none '
            '--local_rank 0 --force_yml network_g:window_sizes=[4, 8] name=x network_g:shift_windows=false '
            '--auto_resume\n\n')
    assert forced_entries(head) == ['network_g:window_sizes=[4, 8]', 'name=x', 'network_g:shift_windows=false']
    run = tmp_path / 'experiments' / 'x'
    (run / 'models').mkdir(parents=True)
    (run / 'x.yml').write_text(head + yaml.safe_dump({'name': 'x', 'network_g': {'type': 'ELAN', **LIGHT}}))
    (run / 'notes.yml').write_text('just: notes\n')  # not an option file of an ELAN: ignored
    file, network_g = run_network_g(str(run / 'models' / 'net_g_5.pth'))
    assert file == str(run / 'x.yml')
    assert network_g['window_sizes'] == [4, 8] and network_g['shift_windows'] is False
    assert run_network_g(str(tmp_path / 'net_g_5.pth')) is None
    shutil.copy(run / 'x.yml', run / 'y.yml')
    (run / 'y.yml').write_text((run / 'x.yml').read_text().replace('shift_windows=false', 'shift_windows=true'))
    with pytest.raises(ElanError, match='the run folder holds option files with different network_g'):
        run_network_g(str(run / 'models' / 'net_g_5.pth'))
