"""``python -m elan_arch.demo --realworld`` / ``make demo-realworld``: ELAN-light x4 in BasicSR's Real-ESRNet pipeline.

1. ``datasets/demo_realworld`` (built when missing or made from other photos or seeds, atomically): the demo's
   training photos (scikit-image's wheel) through ``elan prepare realworld`` (multiscale copies, 400-pixel
   sub-images, meta_info); the held-out photos, cut to squares, as clean references (``val/GT``) and degraded
   once each per seed by the training degradation itself (``val/LQ``: BasicSR's second-order degradation, run
   by the Real-ESRNet model's own ``feed_data`` with fixed seeds);
2. a bicubic-trained ELAN-light: the main demo's weights when ``make demo`` left them, else a short run of its
   option file (``--bicubic-iters``);
3. ``basicsr train -opt options/realworld/train_ELAN_light_realesrnet_x4_demo.yml`` (``RealESRNetModel``,
   degradation on the fly) from those weights, validated at the end with NIQE on the degraded photos (no ground
   truth) and PSNR on the pairs;
4. ``basicsr test -opt options/realworld/test_ELAN_light_realesrnet_x4_demo.yml`` of both networks;
5. per degraded photo: PSNR / SSIM (Y, border 4) against the clean photo and NIQE of the degraded input upscaled
   by bicubic, of ELAN bicubic-trained and of ELAN real-world; side-by-side crops in
   ``results/<test name>_pictures/realworld_<photo>.png`` (input, bicubic, both ELANs, clean photo).

Exit status 0 when ELAN real-world beats bicubic in average PSNR, 1 when it does not, 2 on errors. Run it from the
repository root.
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError

ROOT = Path('datasets/demo_realworld')
TRAIN_OPT = 'options/realworld/train_ELAN_light_realesrnet_x4_demo.yml'
TEST_OPT = 'options/realworld/test_ELAN_light_realesrnet_x4_demo.yml'
BICUBIC_NAME = 'ELAN_light_x4_demo_for_realworld'  # the short bicubic run's experiment (when make demo's is absent)
BICUBIC_ITERS = 200
SEEDS = (1, 2)  # one degraded copy of each held-out photo per seed
SQUARE_MULTIPLE = 16  # sides of the held-out squares (their degraded copies: multiples of 4)
METHODS = ('bicubic', 'ELAN bicubic-trained', 'ELAN real-world')


def sources_text() -> str:
    """What ``SOURCES.txt`` of the demo data records: the photos and the seeds (other text: rebuild)."""
    from elan_arch.prepare.demo_data import TRAIN_PHOTOS, VAL_PHOTOS

    return (''.join(f'HR/{Path(n).stem}.png  skimage/data/{n}\n' for n in TRAIN_PHOTOS) +
            ''.join(f'val/GT/{Path(n).stem}_{s}.png  skimage/data/{n}, centre square; LQ seed {s}\n'
                    for n in VAL_PHOTOS for s in SEEDS))


def centre_square(img: np.ndarray, multiple: int = SQUARE_MULTIPLE) -> np.ndarray:
    """The largest centred square of ``img`` whose side is a multiple of ``multiple``."""
    h, w = img.shape[:2]
    side = min(h, w) // multiple * multiple
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def _kernels(gt_files: Sequence[Path], train_set: dict) -> List[dict]:
    """The blur and sinc kernels BasicSR's ``RealESRGANDataset`` draws for each file (its own code, with the
    training set's options; the global generators must be seeded by the caller, per file)."""
    from basicsr.data.realesrgan_dataset import RealESRGANDataset

    with tempfile.TemporaryDirectory() as tmp:
        meta = Path(tmp) / 'meta_info.txt'
        meta.write_text(''.join(f'{p.name}\n' for p in gt_files))
        opt = dict(train_set, dataroot_gt=str(gt_files[0].parent), meta_info=str(meta), io_backend={'type': 'disk'},
                   use_hflip=False, use_rot=False)
        dataset = RealESRGANDataset(opt)
        return [dataset[i] for i in range(len(gt_files))]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def degrade(gt_files: Sequence[Path], seeds: Sequence[int], train_opt: dict) -> List[np.ndarray]:
    """Each clean image (BGR uint8 file, square, side a multiple of 16) degraded to 1/scale by the training
    degradation of ``train_opt``, run by the Real-ESRNet model's own ``feed_data`` (BasicSR's arithmetic) with
    the global generators seeded by its seed; USM sharpening off (the input is the photo itself). BGR uint8."""
    import cv2
    import torch

    from basicsr.utils import img2tensor, tensor2img

    from elan_arch.models.realworld import RealELANNetModel

    out = []
    for path, seed in zip(gt_files, seeds):
        gt = cv2.imread(str(path), cv2.IMREAD_COLOR)
        opt = dict(copy.deepcopy(train_opt), is_train=True, dist=False, num_gpu=0, rank=0, world_size=1,
                   gt_usm=False, gt_size=gt.shape[0], queue_size=1, path={'pretrain_network_g': None},
                   manual_seed=seed)  # deep: basicsr pops keys of the options it reads
        opt['train']['ema_decay'] = 0
        seed_everything(seed)
        kernels = _kernels([path], train_opt['datasets']['train'])[0]
        model = RealELANNetModel(opt)
        batch = {k: kernels[k][None] for k in ('kernel1', 'kernel2', 'sinc_kernel')}
        batch['gt'] = img2tensor(gt.astype(np.float32) / 255., bgr2rgb=True, float32=True)[None]
        with torch.no_grad():
            model.feed_data(batch)
        out.append(tensor2img(model.lq.detach().cpu()))
    return out


def build_data(root: Path, train_opt: dict, force: bool = False) -> None:
    """Build ``root`` (see the module docstring) under a temporary name; renamed into place when complete."""
    from elan_arch.prepare.demo_data import TRAIN_PHOTOS, VAL_PHOTOS, skimage_photo
    from elan_arch.prepare.realworld import prepare_realworld
    from elan_arch.utils.fileio import atomic_path
    from elan_arch.utils.images import read_image, write_png

    with atomic_path(root, overwrite=force, is_dir=True) as tmp:
        for folder in ('HR', 'val/GT', 'val/LQ'):
            (tmp / folder).mkdir(parents=True)
        for name in TRAIN_PHOTOS:
            write_png(tmp / 'HR' / f'{Path(name).stem}.png', read_image(skimage_photo(name)))
        summary = prepare_realworld([tmp / 'HR'], tmp, name='HR', progress=False)
        print(str(summary).replace(str(tmp), str(root)), flush=True)
        gt_files, seeds = [], []
        for name in VAL_PHOTOS:
            square = centre_square(read_image(skimage_photo(name)))
            for seed in SEEDS:
                gt_files.append(tmp / 'val' / 'GT' / f'{Path(name).stem}_{seed}.png')
                seeds.append(seed)
                write_png(gt_files[-1], square)
        for path, lq in zip(gt_files, degrade(gt_files, seeds, train_opt)):
            write_png(tmp / 'val' / 'LQ' / path.name, lq)
        (tmp / 'SOURCES.txt').write_text(sources_text())


def ensure_data(root: Path, train_opt: dict) -> None:
    """Build the demo data if it is missing, or rebuild it if it was made from other photos or seeds."""
    sources = root / 'SOURCES.txt'
    if not root.exists():
        print(f'Building {root} (elan prepare realworld + degraded held-out photos)', flush=True)
        build_data(root, train_opt)
    elif sources.is_file() and sources.read_text() != sources_text():
        print(f'{root} was built from other photos or seeds ({sources}): rebuilding it', flush=True)
        build_data(root, train_opt, force=True)


def bicubic_weights(run_logged, iters: int, env: dict) -> Tuple[Path, str]:
    """The bicubic-trained ELAN-light: ``make demo``'s final weights if present, else those of a short run of its
    option file under :data:`BICUBIC_NAME` (made now if missing); with where they came from."""
    from elan_arch.demo import run

    main_demo = run.final_weights(Path('experiments', run._load_yaml(run.TRAIN_OPT)['name']))
    if main_demo is not None:
        return main_demo, f'make demo\'s weights ({main_demo})'
    own = run.final_weights(Path('experiments', BICUBIC_NAME))
    if own is None:
        run.ensure_demo_data(Path('datasets/demo'))
        run_logged(['train', '-opt', run.TRAIN_OPT, '--force_yml', f'name={BICUBIC_NAME}', f'train:total_iter={iters}',
                    f'train:scheduler:periods=[{iters}]', f'val:val_freq={iters}'], total_iters=iters, env=env)
        own = run.final_weights(Path('experiments', BICUBIC_NAME))
    return own, f'a {iters}-iteration bicubic run of {run.TRAIN_OPT} ({own})'


def load_results(test_opt: dict, names: Dict[str, str]) -> Dict[str, dict]:
    """Per degraded photo: the clean photo, the degraded input and the three upscalings (BGR uint8); ``names``
    maps the two ELAN methods to the test run names whose SR images ``basicsr test`` saved."""
    import cv2

    from basicsr.utils.matlab_functions import imresize

    pairs = test_opt['datasets']['test_2']
    gt_dir, lq_dir, scale = Path(pairs['dataroot_gt']), Path(pairs['dataroot_lq']), int(test_opt['scale'])
    images = {}
    for gt_path in sorted(gt_dir.glob('*.png')):
        lq = cv2.imread(str(lq_dir / gt_path.name), cv2.IMREAD_COLOR)
        found = {'clean': cv2.imread(str(gt_path), cv2.IMREAD_COLOR), 'input': lq,
                 'bicubic': np.clip(np.round(imresize(lq.astype(np.float64) / 255., scale) * 255.), 0,
                                    255).astype(np.uint8)}
        for method, test_name in names.items():
            sr_path = Path('results', test_name, 'visualization', pairs['name'], f'{gt_path.stem}_{test_name}.png')
            found[method] = cv2.imread(str(sr_path), cv2.IMREAD_COLOR)
            if found[method] is None:
                raise ElanError(f'{sr_path} is missing: basicsr test did not write it')
        images[gt_path.stem] = found
    if not images:
        raise ElanError(f'no PNG images in {gt_dir}')
    return images


def measure(images: Dict[str, dict], scale: int) -> Dict[str, Dict[str, Tuple[float, float, float]]]:
    """Per photo and method: (PSNR, SSIM) on Y against the clean photo (border ``scale``), NIQE (border ``scale``;
    lower is better); the clean photo's NIQE under 'clean'."""
    from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim

    results = {}
    for name, imgs in images.items():
        clean = imgs['clean']
        results[name] = {m: (calculate_psnr(imgs[m], clean, scale, test_y_channel=True),
                             calculate_ssim(imgs[m], clean, scale, test_y_channel=True),
                             float(calculate_niqe(imgs[m], scale))) for m in METHODS}
        results[name]['clean'] = (float('inf'), 1., float(calculate_niqe(clean, scale)))
    return results


def average(results: Dict[str, dict], method: str) -> Tuple[float, float, float]:
    return tuple(float(np.mean([r[method][i] for r in results.values()])) for i in range(3))


def format_table(results: Dict[str, dict]) -> str:
    """Markdown table: PSNR / SSIM / NIQE per method, per degraded photo and on average."""
    rows = ['| degraded photo | ' + ' | '.join(f'{m} PSNR / SSIM / NIQE' for m in METHODS) + ' | clean NIQE |',
            '|---' * (len(METHODS) + 2) + '|']
    for name in list(results) + ['average']:
        res = {m: average(results, m) for m in METHODS + ('clean', )} if name == 'average' else results[name]
        cells = [f'{res[m][0]:.2f} / {res[m][1]:.4f} / {res[m][2]:.2f}' for m in METHODS]
        rows.append(f'| {name} | ' + ' | '.join(cells) + f' | {res["clean"][2]:.2f} |')
    return '\n'.join(rows)


def write_pictures(images: Dict[str, dict], results: Dict[str, dict], out_dir: Path, scale: int) -> List[Path]:
    """Per degraded photo, the same crop of: the input (enlarged by pixel repetition), bicubic, both ELANs, the
    clean photo, labelled with PSNR / NIQE."""
    import cv2

    from elan_arch.demo.report import comparison_image

    written = []
    for name, imgs in images.items():
        enlarged = cv2.resize(imgs['input'], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        panels = [('degraded input', enlarged)]
        panels += [(f'{m.replace("ELAN ", "")} {results[name][m][0]:.2f} dB / {results[name][m][2]:.1f}', imgs[m])
                   for m in METHODS]
        panels.append((f'clean NIQE {results[name]["clean"][2]:.1f}', imgs['clean']))
        written.append(comparison_image(panels, out_dir / f'realworld_{name}.png', crop=144))
    return written


def main(argv: Optional[List[str]] = None) -> int:
    from elan_arch.demo import run

    parser = argparse.ArgumentParser(prog='python -m elan_arch.demo --realworld', description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int,
                        help=f'real-world training iterations (default: total_iter of {TRAIN_OPT})')
    parser.add_argument('--bicubic-iters', type=int, default=BICUBIC_ITERS,
                        help=f'iterations of the bicubic run made when make demo\'s weights are missing (default: '
                        f'{BICUBIC_ITERS})')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        import elan_arch  # noqa: F401  (before basicsr)
        train_opt, test_opt = run._load_yaml(TRAIN_OPT), run._load_yaml(TEST_OPT)
        iters = args.iters or int(train_opt['train']['total_iter'])
        if iters < 1 or args.bicubic_iters < 1:
            raise ElanError(f'--iters {iters} / --bicubic-iters {args.bicubic_iters}: must be at least 1')
        env = run.command_env()
        ensure_data(Path(train_opt['datasets']['train']['dataroot_gt']), train_opt)
        bicubic, origin = bicubic_weights(run.run_logged, args.bicubic_iters, env)
        print(f'Bicubic-trained ELAN-light: {origin}', flush=True)
        run.run_logged(['train', '-opt', TRAIN_OPT, '--force_yml', f'train:total_iter={iters}',
                        f'train:scheduler:periods=[{iters}]', f'path:pretrain_network_g={bicubic}'],
                       total_iters=iters, env=env)
        bicubic_test = f'{test_opt["name"]}_bicubic_trained'
        run.run_logged(['test', '-opt', TEST_OPT], env=env)
        run.run_logged(['test', '-opt', TEST_OPT, '--force_yml', f'name={bicubic_test}',
                        f'path:pretrain_network_g={bicubic}'], env=env)
        scale = int(test_opt['scale'])
        images = load_results(test_opt, {'ELAN bicubic-trained': bicubic_test, 'ELAN real-world': test_opt['name']})
        results = measure(images, scale)
        pictures = write_pictures(images, results, run.pictures_folder(test_opt['name']), scale)
    except ElanError as err:
        print(f'demo: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'demo: interrupted (a stopped training saved its state: basicsr train -opt {TRAIN_OPT} --auto_resume '
              'continues it)', file=sys.stderr)
        return 130
    print(f'\nELAN-light x4, {iters} Real-ESRNet iterations from {origin}, on held-out photos degraded by the '
          f'training degradation (PSNR/SSIM on Y against the clean photo, border {scale}; NIQE: lower is better; '
          f'{time.perf_counter() - start:.0f} s in all):\n{format_table(results)}')
    gain = average(results, 'ELAN real-world')[0] - average(results, 'bicubic')[0]
    print(f'\nELAN real-world {run.verdict(gain)[5:-1]} on the degraded photos.')
    weights = run.final_weights(Path('experiments', train_opt['name']))
    if weights is not None:
        print(f'Trained weights: {weights}\nUpscale a photo with them: elan upscale -i photo.jpg -o photo_x4.png '
              f'--weights {weights}')
    print('Pictures: ' + ', '.join(str(p) for p in pictures))
    return 0 if gain > 0 else 1
