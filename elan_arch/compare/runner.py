"""The run of ``elan compare``: every model on every test image, measured as ``basicsr test`` measures.

Metrics: :func:`basicsr.metrics.calculate_psnr` and :func:`~basicsr.metrics.calculate_ssim` of the uint8 SR
and HR images, ``crop_border = scale``, ``test_y_channel = True``, the options of BasicSR's test files (and of
``options/test_*.yml``); set averages are the mean over the images, as ``basicsr test`` logs them.

Latency: the wall time of each model's ``upscale`` call on each image (after a warm-up on a small probe when
it was loaded; CUDA synchronised), so it includes tiling but not reading or writing files.

Outputs are streamed: each image's HR, LR and SR images and absolute differences from the HR image are written
to ``images/<set>/<image>/`` as soon as they are computed, and only numbers stay in memory. The whole output
folder is built under a temporary name and renamed when complete (``--force`` replaces an existing one).
"""
from __future__ import annotations

import csv
import datetime
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from elan_arch.compare.models import Model, RunSettings, load_model
from elan_arch.compare.sets import TestSet, find_sets, load_pair
from elan_arch.compare.specs import ModelSpec, page_names
from elan_arch.utils.errors import ElanError, one_line

#: Names the viewer gives the HR and the LR image.
GT, LR = 'GT', 'LR'


@dataclass
class CompareOptions:
    """What ``elan compare`` was asked (see :mod:`elan_arch.cli.compare_cmd` for each option)."""

    inputs: Sequence[Path]
    scale: int
    models: Sequence[ModelSpec]
    output: Path
    device: str = 'auto'
    half: bool = False
    tile: int = 0
    overlap: int = 32
    crop: Optional[Tuple[int, int, int, int]] = None
    figures: int = 8
    force: bool = False
    quiet: bool = False
    command: str = ''
    overrides: Optional[Dict[str, Any]] = None


@dataclass
class Outcome:
    """What a run wrote and what went wrong (messages name the files); ``status`` 0, or 1 when a model or an
    image could not be compared."""

    output: Path
    results: Dict[str, Any]
    problems: List[str] = field(default_factory=list)
    figures: List[Path] = field(default_factory=list)

    @property
    def status(self) -> int:
        return 1 if self.problems else 0


def slug(text: str, taken: Sequence[str] = ()) -> str:
    """``text`` as a file name of letters, digits, ``.``, ``_`` and ``-`` (unique among ``taken``)."""
    base = re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('._') or 'x'
    name, k = base, 1
    while name in taken or name in (GT, LR):
        k += 1
        name = f'{base}_{k}'
    return name


def machine(settings: RunSettings) -> str:
    """The device the networks ran on, in words (GPU name, or CPU and threads)."""
    import torch

    if settings.device.type == 'cuda':
        return torch.cuda.get_device_name(settings.device)
    from elan_arch.utils.cpu_tuning import cpu_name

    return f'{cpu_name()}, {torch.get_num_threads()} threads'


def load_models(specs: Sequence[ModelSpec], scale: int, settings: RunSettings,
                problems: List[str]) -> List[Model]:
    """Bicubic (always: the viewer shows it; first unless ``-m bicubic`` places it) and every model that
    loads; a model that does not is reported in ``problems`` and left out."""
    specs = list(specs)
    if not any(s.kind == 'bicubic' for s in specs):
        specs.insert(0, ModelSpec(None, 'bicubic', argument='bicubic'))
    models = []
    for spec, name in zip(specs, page_names(specs)):
        try:
            models.append(load_model(spec, name, scale, settings))
        except ElanError as err:
            problems.append(f'model {name} left out: {err}')
            print(f'elan compare: {problems[-1]}', file=sys.stderr, flush=True)
        except Exception as err:  # noqa: BLE001  (any arch's own error: reported, the others still compared)
            problems.append(f'model {name} left out: {spec.argument}: {one_line(err, 400)}')
            print(f'elan compare: {problems[-1]}', file=sys.stderr, flush=True)
    if len(models) < 2:
        raise ElanError('fewer than two models to compare (messages above); give -m bicubic -m CHECKPOINT ...')
    return models


def _sync(settings: RunSettings) -> None:
    if settings.device.type == 'cuda':
        import torch

        torch.cuda.synchronize(settings.device)


def run_image(models: List[Model], keys: Dict[str, str], hr: np.ndarray, lr: np.ndarray, scale: int,
              folder: Path, settings: RunSettings, say, advance) -> Dict[str, Any]:
    """Every model on one image: its files in ``folder`` (``GT.png``, ``LR.png``, ``<key>.png``,
    ``diff_<key>.png``) and its figures ``{model: {psnr, ssim, ms}}`` / ``{model: error}``."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    from elan_arch.utils.images import write_png

    folder.mkdir(parents=True)
    write_png(folder / f'{GT}.png', hr)
    write_png(folder / f'{LR}.png', lr)
    metrics: Dict[str, Dict[str, float]] = {}
    errors: Dict[str, str] = {}
    for model in models:
        try:
            _sync(settings)
            start = time.perf_counter()
            sr = model.upscale(lr)
            _sync(settings)
            seconds = time.perf_counter() - start
            if sr.shape != hr.shape:
                raise ElanError(f'output is {sr.shape[1]}x{sr.shape[0]}, not {hr.shape[1]}x{hr.shape[0]}')
        except Exception as err:  # noqa: BLE001  (whatever a model raises on one image: reported, the rest goes on)
            errors[model.name] = one_line(err)
            say(model.name, errors[model.name])
            advance()
            continue
        metrics[model.name] = {
            'psnr': float(calculate_psnr(sr, hr, crop_border=scale, test_y_channel=True)),
            'ssim': float(calculate_ssim(sr, hr, crop_border=scale, test_y_channel=True)),
            'ms': seconds * 1000.}
        write_png(folder / f'{keys[model.name]}.png', sr)
        write_png(folder / f'diff_{keys[model.name]}.png',
                  np.abs(sr.astype(np.int16) - hr.astype(np.int16)).astype(np.uint8))
        advance()
    return {'metrics': metrics, 'errors': errors}


def summarise(images: List[Dict[str, Any]], models: List[Model]) -> Dict[str, Dict[str, Any]]:
    """Per model: mean PSNR, SSIM and latency over the images it upscaled, their number, and ms per output
    megapixel."""
    summary = {}
    for model in models:
        done = [(img, img['metrics'][model.name]) for img in images if model.name in img.get('metrics', {})]
        if not done:
            summary[model.name] = {'images': 0}
            continue
        pixels = sum(img['width'] * img['height'] for img, _ in done)
        summary[model.name] = {
            'images': len(done),
            'psnr': float(np.mean([m['psnr'] for _, m in done])),
            'ssim': float(np.mean([m['ssim'] for _, m in done])),
            'ms': float(np.mean([m['ms'] for _, m in done])),
            'ms_per_mp': float(sum(m['ms'] for _, m in done) / (pixels / 1e6))}
    return summary


def run_set(test_set: TestSet, models: List[Model], keys: Dict[str, str], root: Path, options: CompareOptions,
            settings: RunSettings, bar, problems: List[str]) -> Dict[str, Any]:
    """One test set: every image through :func:`run_image`; the set's entry of ``results.json``."""
    set_key = slug(test_set.name)
    images: List[Dict[str, Any]] = []
    taken: List[str] = []
    for pair in test_set.pairs:
        bar.set_postfix_str(f'{test_set.name}/{pair.name}')
        try:
            hr, lr = load_pair(pair, options.scale)
        except ElanError as err:
            problems.append(f'{test_set.name}: image left out: {err}')
            bar.write(f'elan compare: {problems[-1]}', file=sys.stderr)
            bar.update(len(models))
            continue
        image_key = slug(pair.name, taken)
        taken.append(image_key)
        folder = Path('images', set_key, image_key)

        def say(model_name: str, message: str, pair=pair) -> None:
            problems.append(f'{model_name} failed on {pair.lr or pair.hr}: {message}')
            bar.write(f'elan compare: {problems[-1]}', file=sys.stderr)

        entry = run_image(models, keys, hr, lr, options.scale, root / folder, settings, say, bar.update)
        entry.update(name=pair.name, key=image_key, folder=folder.as_posix(), hr_file=str(pair.hr),
                     lr_file=str(pair.lr) if pair.lr else None, width=int(hr.shape[1]), height=int(hr.shape[0]))
        images.append(entry)
    return {'name': test_set.name, 'key': set_key, 'source': test_set.source, 'images': images,
            'summary': summarise(images, models)}


def write_tables(root: Path, results: Dict[str, Any]) -> None:
    """``results.json`` (everything) and ``results.csv`` (one row per set, image and model)."""
    (root / 'results.json').write_text(json.dumps(results, indent=1), encoding='utf-8')
    with open(root / 'results.csv', 'w', newline='', encoding='utf-8') as handle:
        writer = csv.writer(handle)
        writer.writerow(['set', 'image', 'model', 'psnr_y', 'ssim_y', 'latency_ms', 'hr_width', 'hr_height',
                         'error'])
        for test_set in results['sets']:
            for img in test_set['images']:
                for model in results['models']:
                    name = model['name']
                    m = img['metrics'].get(name)
                    row = [f'{m["psnr"]:.6f}', f'{m["ssim"]:.6f}', f'{m["ms"]:.2f}'] if m else ['', '', '']
                    writer.writerow([test_set['name'], img['name'], name, *row, img['width'], img['height'],
                                     img['errors'].get(name, '')])


def compare(options: CompareOptions) -> Outcome:
    """Run the comparison and write ``options.output`` (``index.html``, ``figures/``, ``results.csv``,
    ``results.json``, ``images/``).

    Raises:
        ElanError: usage faults (no test images, fewer than two models that load, an existing output without
            ``--force``); a model or an image that fails is reported in :attr:`Outcome.problems` instead.
    """
    import torch
    from tqdm import tqdm

    from elan_arch.compare.figures import make_figures
    from elan_arch.compare.page import write_page
    from elan_arch.inference.upscale import select_device
    from elan_arch.utils.fileio import atomic_path, check_output_free

    if options.scale < 1:
        raise ElanError(f'--scale {options.scale}: must be at least 1')
    check_output_free(options.output, options.force)
    sets = find_sets(options.inputs, options.scale)
    device, dtype = select_device(options.device, options.half)
    settings = RunSettings(device, dtype, options.tile, options.overlap, options.overrides or None)
    problems: List[str] = []
    models = load_models(options.models, options.scale, settings, problems)
    keys: Dict[str, str] = {}
    for model in models:
        keys[model.name] = slug(model.name, list(keys.values()))
    results: Dict[str, Any] = {
        'scale': options.scale,
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'command': options.command, 'device': machine(settings),
        'precision': 'float16' if options.half else 'float32', 'tile': options.tile or None,
        'torch': torch.__version__,
        'metrics': f'basicsr.metrics calculate_psnr / calculate_ssim, Y channel, crop_border={options.scale}',
        'models': [{'name': m.name, 'key': keys[m.name], 'about': m.about, 'params': m.params} for m in models],
        'sets': []}
    total = sum(len(s.pairs) for s in sets) * len(models)
    with atomic_path(options.output, overwrite=options.force, is_dir=True) as root:
        with tqdm(total=total, unit='run', desc='elan compare', disable=options.quiet, dynamic_ncols=True) as bar:
            for test_set in sets:
                results['sets'].append(run_set(test_set, models, keys, root, options, settings, bar, problems))
        results['problems'] = problems
        write_tables(root, results)
        figures = make_figures(root, results, options.crop, options.figures)
        results['figures'] = [p.relative_to(root).as_posix() for p in figures]
        write_tables(root, results)
        write_page(root / 'index.html', results)
    return Outcome(options.output, results, problems, [options.output / p.relative_to(root) for p in figures])
