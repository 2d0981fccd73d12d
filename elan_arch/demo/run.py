"""``make demo`` / ``python -m elan_arch.demo``: train ELAN-light x4 on the demo data, test it, compare with bicubic.

1. ``elan prepare demo`` if ``datasets/demo`` is missing or was made from an older photo list
   (real photos from scikit-image's wheel);
2. ``basicsr train -opt options/train_ELAN_light_x4_demo.yml`` (CPU, or the GPU when present),
   with a progress bar; ``--iters N`` changes the iteration budget (and the cosine period), which is
   :data:`GPU_ITERS` instead of the option file's when a GPU is present;
3. ``basicsr test -opt options/test_ELAN_light_x4_demo.yml`` on the held-out photos;
4. Y-channel PSNR / SSIM (border 4, BasicSR's metrics) of ELAN's images and of MATLAB-bicubic
   upscaling of the same LR images, per photo and on average;
5. pictures in ``results/<test name>_pictures/`` (:func:`pictures_folder`, where a later ``basicsr test``
   does not move them): per photo the same crop of bicubic, ELAN and the original side by side
   (``compare_<photo>.png``), and the validation PSNR over the iterations against the bicubic line
   (``validation_psnr.png``); the paths of the trained weights and of the pictures are printed at the end.

Exit status 0 when ELAN beats bicubic in average PSNR, 1 when it does not, 2 on errors.
Run it from the repository root (it reads ``options/`` and writes ``datasets/``, ``experiments/``,
``results/`` and ``tb_logger/`` there).

Ablations: ``--variant NAME`` (one of :data:`~elan_arch.archs.elan_arch.ELAN_ABLATIONS`, e.g. ``no_shift``) and
``--set OPTION=VALUE`` (any ELAN option of ``network_g``, e.g. ``lfe=conv1x1``) change the network of both
commands (``--force_yml network_g:...``), and the run's names get a suffix (``ELAN_light_x4_demo_no_shift``,
``test_ELAN_light_x4_demo_no_shift``) so that runs of different variants keep their own experiment and results
folders; the test reads that run's weights. Without them the demo runs exactly as described above. This compares
variants on the demo's few photos and minutes of training, not the paper's DIV2K recipe.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elan_arch.utils.errors import ElanError

# With a GPU the demo trains longer in the same spirit, for minutes as on the CPU (the GPU's measured
# speed: docs/training.md, "The demo").
GPU_ITERS = 4000
TRAIN_OPT = 'options/train_ELAN_light_x4_demo.yml'
TEST_OPT = 'options/test_ELAN_light_x4_demo.yml'
ITER_PATTERN = re.compile(r'\[epoch:\s*\d+, iter:\s*([\d,]+),')  # basicsr's training log lines


def _load_yaml(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise ElanError(f'{path} not found: run the demo from the repository root (where options/ is)')
    with open(path, encoding='utf-8') as handle:
        return yaml.safe_load(handle)


def command_env() -> Dict[str, str]:
    """The environment of the demo's ``basicsr`` commands: unbuffered output, and OpenMP's wait policy chosen
    once, as the demo starts, from the CPU's load (:func:`elan_arch.utils.cpu_tuning.wait_policy_env`: passive
    on a busy CPU; an ``OMP_WAIT_POLICY`` of the user's wins)."""
    from elan_arch.utils import cpu_tuning

    return cpu_tuning.wait_policy_env(dict(os.environ, PYTHONUNBUFFERED='1'))


def run_logged(argv: Sequence[str], total_iters: Optional[int] = None,
               env: Optional[Dict[str, str]] = None) -> None:
    """Run a ``basicsr`` command in ``env`` (default: :func:`command_env`, decided now); with
    ``total_iters`` show a tqdm bar driven by its log lines.

    Validation results and errors are echoed; the full log is in the experiment folder. On failure
    the last 40 lines of output are printed and :class:`ElanError` is raised.
    """
    from tqdm import tqdm

    command = [sys.executable, '-m', 'elan_arch.cli.basicsr_cmd', *argv]
    print('$ basicsr ' + ' '.join(argv), flush=True)
    if env is None:
        env = command_env()
    tail: List[str] = []
    bar = tqdm(total=total_iters, unit='iter', desc='training', dynamic_ncols=True) if total_iters else None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            match = ITER_PATTERN.search(line)
            if bar is not None and match:
                bar.update(int(match.group(1).replace(',', '')) - bar.n)
            if re.search(r'Validation|# psnr|# ssim|error|Error', line):
                (bar.write if bar is not None else print)(line.rstrip())
    if bar is not None:
        if proc.returncode == 0:  # basicsr logs every print_freq iterations: a finished run did them all
            bar.update(bar.total - bar.n)
        bar.close()
    if proc.returncode != 0:
        print('\n'.join(tail), file=sys.stderr)
        raise ElanError(f'`basicsr {" ".join(argv)}` failed with exit status {proc.returncode} (output above)')


def verdict(gain: float) -> str:
    """The demo's last line: ELAN's average PSNR gain over bicubic (dB), said the right way round."""
    if gain > 0:
        return f'ELAN beats bicubic by {gain:.2f} dB average PSNR.'
    return f'ELAN does NOT beat bicubic: {-gain:.2f} dB below it in average PSNR.'


def default_iters(train_opt: dict) -> int:
    """The training budget without ``--iters``: the option file's ``total_iter`` (sized for a 2-core CPU), or
    :data:`GPU_ITERS` when CUDA is present (the GPU basicsr then trains on)."""
    import torch

    iters = int(train_opt['train']['total_iter'])
    return max(iters, GPU_ITERS) if torch.cuda.is_available() else iters


def ensure_demo_data(root: Path) -> None:
    """Build the demo dataset at ``root`` if it is missing, or rebuild it if ``elan prepare demo`` made it
    from another list of photos (its ``SOURCES.txt`` differs from today's); a folder without ``SOURCES.txt``
    is someone's own data and is used as it is."""
    from elan_arch.prepare import prepare_demo
    from elan_arch.prepare.demo_data import demo_sources

    sources = root / 'SOURCES.txt'
    if not root.exists():
        print(prepare_demo(root), flush=True)
    elif sources.is_file() and sources.read_text() != demo_sources():
        print(f'{root} was built from an older list of demo photos ({sources}): rebuilding it', flush=True)
        print(prepare_demo(root, force=True), flush=True)


def load_images(gt_dir: Path, lq_dir: Path, sr_dir: Path, suffix: str, scale: int) -> Dict[str, dict]:
    """Per held-out photo: the original, MATLAB-bicubic upscaling of its LR image
    (``basicsr.utils.matlab_functions.imresize``, rounded to uint8 like the SR images) and ELAN's SR image
    (``sr_dir/<name>_<suffix>.png``, as ``basicsr test`` saved it); BGR uint8 arrays."""
    import cv2
    import numpy as np

    from basicsr.utils.matlab_functions import imresize

    images = {}
    for gt_path in sorted(gt_dir.glob('*.png')):
        gt = cv2.imread(str(gt_path), cv2.IMREAD_COLOR)
        lq = cv2.imread(str(lq_dir / gt_path.name), cv2.IMREAD_COLOR)
        sr = cv2.imread(str(sr_dir / f'{gt_path.stem}_{suffix}.png'), cv2.IMREAD_COLOR)
        if lq is None or sr is None:
            raise ElanError(f'missing {lq_dir / gt_path.name} or the SR image of {gt_path.name} in {sr_dir}')
        bicubic = np.clip(np.round(imresize(lq.astype(np.float64) / 255., scale) * 255.), 0, 255).astype(np.uint8)
        images[gt_path.stem] = {'bicubic': bicubic, 'ELAN': sr, 'original': gt}
    if not images:
        raise ElanError(f'no PNG images in {gt_dir}')
    return images


def compare_with_bicubic(images: Dict[str, dict], scale: int) -> Dict[str, dict]:
    """Per-image Y-channel PSNR/SSIM (border ``scale``, BasicSR's metrics) of bicubic and ELAN."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    return {name: {method: (calculate_psnr(imgs[method], imgs['original'], scale, test_y_channel=True),
                            calculate_ssim(imgs[method], imgs['original'], scale, test_y_channel=True))
                   for method in ('bicubic', 'ELAN')}
            for name, imgs in images.items()}


def write_pictures(images: Dict[str, dict], results: Dict[str, dict], train_opt: dict, iters: int,
                   out_dir: Path, label: str = 'ELAN-light x4') -> List[Path]:
    """Side-by-side crops per photo and the validation PSNR curve of the newest training log, in
    ``out_dir``; returns the paths written (the curve is skipped, with a note, if the log does not
    hold one validation result per expected validation). ``label`` names the network in the curve's title."""
    from elan_arch.demo.report import comparison_image, validation_curve, validation_psnrs

    written = []
    for name, imgs in images.items():
        labels = {m: f'{m} {results[name][m][0]:.2f} dB' for m in ('bicubic', 'ELAN')}
        written.append(comparison_image([(labels['bicubic'], imgs['bicubic']), (labels['ELAN'], imgs['ELAN']),
                                         ('original', imgs['original'])], out_dir / f'compare_{name}.png'))
    logs = sorted(Path('experiments', train_opt['name']).glob('train_*.log'), key=lambda p: p.stat().st_mtime)
    val_freq = int(float(train_opt['val']['val_freq']))
    checkpoints = list(range(val_freq, iters + 1, val_freq)) + [iters]  # basicsr validates at the end too
    psnrs = validation_psnrs(logs[-1]) if logs else []
    if len(psnrs) == len(checkpoints):
        bicubic = sum(r['bicubic'][0] for r in results.values()) / len(results)
        written.append(validation_curve(checkpoints, psnrs, bicubic, out_dir / 'validation_psnr.png',
                                        f'{label} on the held-out photos ({iters} iterations)'))
    else:
        print(f'(no PSNR curve: {len(psnrs)} validation results in the newest training log, '
              f'{len(checkpoints)} expected)')
    return written


def _yml_text(value: object) -> str:
    """A value as ``--force_yml`` text (basicsr parses true/false, numbers and ``[...]`` lists back)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


def network_options(variant: Optional[str], settings: Sequence[str]) -> Dict[str, str]:
    """The ``network_g`` options a demo run changes, as ``--force_yml`` value texts: those of the ablation
    ``variant`` (:data:`~elan_arch.archs.elan_arch.ELAN_ABLATIONS`), then each ``OPTION=VALUE`` of ``settings``
    (``--set``; a ``network_g:`` prefix is allowed). ElanError for an unknown variant or option, or a setting
    that is not ``OPTION=VALUE``."""
    import inspect

    from elan_arch.archs.elan_arch import ELAN, ELAN_ABLATIONS

    options: Dict[str, str] = {}
    if variant is not None:
        if variant not in ELAN_ABLATIONS:
            raise ElanError(f'--variant {variant}: not one of {", ".join(ELAN_ABLATIONS)}')
        options.update({k: _yml_text(v) for k, v in ELAN_ABLATIONS[variant].items()})
    known = [name for name in inspect.signature(ELAN).parameters]
    for setting in settings:
        key, sep, value = setting.partition('=')
        key, value = key.strip(), value.strip()
        key = key[len('network_g:'):] if key.startswith('network_g:') else key
        if not sep or not key or not value or '=' in value:
            raise ElanError(f'--set {setting!r}: expected OPTION=VALUE with an ELAN option of network_g, '
                            'e.g. --set lfe=conv1x1')
        if key not in known:
            raise ElanError(f'--set {setting}: {key!r} is not an ELAN option (one of {", ".join(known)})')
        options[key] = value
    return options


def check_network(network_g: dict, options: Dict[str, str]) -> None:
    """Build ``network_g`` with ``options`` parsed as basicsr's ``--force_yml`` parses them, so that an invalid
    variant stops before training starts (ElanError with ELAN's rule)."""
    from basicsr.utils.options import _postprocess_yml_value

    from elan_arch.archs.elan_arch import ELAN

    kwargs = {k: v for k, v in network_g.items() if k != 'type'}
    kwargs.update({k: _postprocess_yml_value(v) for k, v in options.items()})
    try:
        ELAN(**kwargs)
    except (TypeError, ValueError) as err:
        raise ElanError(f'this network cannot be built: {err}') from err


def run_suffix(variant: Optional[str], settings: Sequence[str], options: Dict[str, str]) -> str:
    """The suffix of the run's names: the variant's name, then the ``--set`` options as ``key-value``."""
    parts = [variant] if variant else []
    set_keys = [s.partition('=')[0].strip().replace('network_g:', '') for s in settings]
    parts += [re.sub(r'[^A-Za-z0-9_.-]+', '', re.sub(r'[,\s]+', '.', f'{k}-{options[k]}'))
              for k in dict.fromkeys(set_keys)]
    return '_'.join(parts)


def pictures_folder(test_name: str) -> Path:
    """Where the demo writes its pictures: ``results/<test name>_pictures/``, next to (not in) the test run's
    ``results/<test name>/``, which basicsr renames to ``<test name>_archived_<time>`` when the test runs again."""
    return Path('results', f'{test_name}_pictures')


def final_weights(experiment: Path) -> Optional[Path]:
    """The trained network a run left in ``experiment/models/``: ``net_g_latest.pth`` (basicsr's save at the end),
    else the ``net_g_<iter>.pth`` of the latest iteration; None if there is none."""
    models = experiment / 'models'
    if (models / 'net_g_latest.pth').is_file():
        return models / 'net_g_latest.pth'
    saved = [(int(m.group(1)), p) for p in models.glob('net_g_*.pth')
             for m in [re.fullmatch(r'net_g_(\d+)\.pth', p.name)] if m]
    return max(saved)[1] if saved else None


def report_paths(experiment: Path, pictures: Sequence[Path]) -> List[str]:
    """The lines that tell where the demo's results are (only files that exist): the trained weights, with the
    command that upscales a photo with them, and the pictures."""
    lines = []
    weights = final_weights(experiment)
    if weights is not None:
        lines += [f'Trained weights: {weights}',
                  f'Upscale a photo with them: elan upscale -i photo.jpg -o photo_x4.png --weights {weights}']
    shown = [str(p) for p in pictures if p.is_file()]
    if shown:
        lines.append('Pictures: ' + ', '.join(shown))
    return lines


def compare_page(test_opt: dict, options: Dict[str, str], experiment: Path, label: str) -> Path:
    """``elan compare``'s page of bicubic vs the trained network vs the held-out originals, written to
    ``<pictures folder>/compare/`` (:func:`elan_arch.compare.demo.demo_page`); returns its ``index.html``."""
    from elan_arch.compare.demo import demo_page

    weights = final_weights(experiment)
    if weights is None:
        raise ElanError(f'no trained weights in {experiment / "models"} for the comparison page')
    return demo_page(Path(TEST_OPT), test_opt, options, weights, pictures_folder(test_opt['name']) / 'compare',
                     label.split(' (')[0])


def format_table(results: Dict[str, dict]) -> str:
    """Markdown table: one row per image plus the average, PSNR (dB) / SSIM for bicubic and ELAN."""
    rows = ['| image | bicubic PSNR / SSIM | ELAN-light PSNR / SSIM | gain (dB) |', '|---|---|---|---|']
    names = list(results) + ['average']
    for name in names:
        if name == 'average':
            res = {m: tuple(sum(results[n][m][i] for n in results) / len(results) for i in (0, 1))
                   for m in ('bicubic', 'ELAN')}
        else:
            res = results[name]
        (bp, bs), (ep, es) = res['bicubic'], res['ELAN']
        rows.append(f'| {name} | {bp:.2f} / {bs:.4f} | {ep:.2f} / {es:.4f} | {ep - bp:+.2f} |')
    return '\n'.join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog='python -m elan_arch.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--realworld', action='store_true', help='the real-world demo instead: ELAN-light in '
                        'BasicSR\'s Real-ESRNet pipeline on degraded photos (elan_arch/demo/realworld.py; its own '
                        'options: python -m elan_arch.demo --realworld -h)')
    parser.add_argument('--iters', type=int, help=f'training iterations (default: total_iter of {TRAIN_OPT}; '
                                                  f'{GPU_ITERS} with a GPU)')
    parser.add_argument('--variant', help='train and test one of the paper\'s ablation variants of ELAN-light '
                        '(no_shift, conv3x3, window4, window8, window16, sa, no_share, share3, no_shift_windows; '
                        'see options/ablation/) instead; its runs get their own names')
    parser.add_argument('--set', action='append', default=[], metavar='OPTION=VALUE', dest='settings',
                        help='change an ELAN option of network_g for this run (repeatable; e.g. --set lfe=conv1x1 '
                        'or --set network_g:window_sizes=[8,16]); its runs get their own names')
    args = parser.parse_args(argv)
    if args.realworld:  # python -m elan_arch.demo --realworld runs elan_arch.demo.realworld (__main__.py)
        parser.error('--realworld: run it as python -m elan_arch.demo --realworld (or make demo-realworld)')
    start = time.perf_counter()
    resume = f'basicsr train -opt {TRAIN_OPT} --auto_resume'
    try:
        import elan_arch  # noqa: F401  (before basicsr)
        train_opt, test_opt = _load_yaml(TRAIN_OPT), _load_yaml(TEST_OPT)
        options = network_options(args.variant, args.settings)
        renames: List[str] = []
        test_renames: List[str] = []
        label = 'ELAN-light x4'
        if options:  # an ablation: its own experiment and results, the test reading its weights
            check_network(train_opt['network_g'], options)
            suffix = run_suffix(args.variant, args.settings, options)
            train_opt['name'], test_opt['name'] = f'{train_opt["name"]}_{suffix}', f'{test_opt["name"]}_{suffix}'
            network = [f'network_g:{k}={v}' for k, v in options.items()]
            renames = [f'name={train_opt["name"]}', *network]
            test_renames = ['--force_yml', f'name={test_opt["name"]}',
                            f'path:pretrain_network_g=experiments/{train_opt["name"]}/models/net_g_latest.pth',
                            *network]
            label = f'ELAN-light x4 {suffix} ({", ".join(f"{k}: {v}" for k, v in options.items())})'
            resume += ' --force_yml ' + ' '.join(renames)
        ensure_demo_data(Path(train_opt['datasets']['train']['dataroot_gt']).parent)
        iters = args.iters or default_iters(train_opt)
        if iters < 1:
            raise ElanError(f'--iters {iters}: must be at least 1')
        overrides = [f'train:total_iter={iters}', f'train:scheduler:periods=[{iters}]', *renames]
        env = command_env()  # one decision for both commands, taken as the demo starts
        run_logged(['train', '-opt', TRAIN_OPT, '--force_yml', *overrides], total_iters=iters, env=env)
        run_logged(['test', '-opt', TEST_OPT, *test_renames], env=env)
        test_set = test_opt['datasets']['test_1']
        images = load_images(Path(test_set['dataroot_gt']), Path(test_set['dataroot_lq']),
                             Path('results', test_opt['name'], 'visualization', test_set['name']),
                             test_opt['name'], int(test_opt['scale']))
        results = compare_with_bicubic(images, int(test_opt['scale']))
        pictures = write_pictures(images, results, train_opt, iters, pictures_folder(test_opt['name']), label)
        page = compare_page(test_opt, options, Path('experiments', train_opt['name']), label)
    except ElanError as err:
        print(f'demo: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'demo: interrupted (a stopped training saved its state: {resume} continues it)', file=sys.stderr)
        return 130
    print(f'\n{label} after {iters} iterations vs bicubic on the held-out photos '
          f'(Y channel, border 4; {time.perf_counter() - start:.0f} s in all):\n{format_table(results)}')
    gain = sum(r['ELAN'][0] - r['bicubic'][0] for r in results.values()) / len(results)
    print('\n' + verdict(gain))
    print('\n'.join(report_paths(Path('experiments', train_opt['name']), pictures)))
    print(f'Comparison page (bicubic vs {label} vs the originals; open it in a browser): {page}')
    return 0 if gain > 0 else 1

