"""Test sets for ``elan compare``: where the HR images are and where their LR images come from.

``-i`` takes, each time:

- a set folder in BasicSR's layout: ``GTmod<m>/`` and ``LRbicx<s>/`` (what ``elan prepare benchmark`` writes
  and BasicSR's test option files read), or ``HR/`` and ``LR_bicubic/X<s>/`` (the common download layout;
  LR files named ``<name>.png`` or ``<name>x<s>.png``);
- an option file (``.yml``): every dataset of its ``datasets`` with ``dataroot_gt`` (and ``dataroot_lq``)
  on disk, named by its ``name``, as ``basicsr test`` reads them;
- any other folder of images: its images are the HR images, mod-cropped to the scale (bottom and right)
  and the LR images made from them by MATLAB's bicubic (:func:`elan_arch.utils.images.bicubic_downscale`,
  as ``elan prepare benchmark`` makes them).

As in ``basicsr test`` (``PairedImageDataset``), an HR image larger than its LR image times the scale by
less than the scale (an un-mod-cropped HR) is cropped at the bottom and right; any other size mismatch is
an error naming both files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import shown_path


@dataclass(frozen=True)
class ImagePair:
    """One test image: its HR file and its LR file (None: made from the HR image)."""

    name: str
    hr: Path
    lr: Optional[Path] = None


@dataclass
class TestSet:
    """A named list of test images; ``source`` says where the LR images come from (shown on the page)."""

    name: str
    pairs: List[ImagePair]
    source: str


def _images(folder: Path, what: str) -> List[Path]:
    from elan_arch.utils.images import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise ElanError(f'{what} folder {shown_path(folder)} does not exist')
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.')
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ElanError(f'{what} folder {shown_path(folder)} holds no images (looked for '
                        f'{", ".join(IMAGE_EXTENSIONS)}); give a folder of test images')
    return files


def pair_folders(name: str, hr_dir: Path, lr_dir: Optional[Path], scale: int, source: str) -> TestSet:
    """The set of the images in ``hr_dir``, each paired with the LR image of the same name in ``lr_dir``
    (``<name>.png`` or ``<name>x<scale>.png``; any image extension); ElanError for an HR image without one."""
    hrs = _images(hr_dir, f'set {name}: HR')
    if lr_dir is None:
        return TestSet(name, [ImagePair(p.stem, p) for p in hrs], source)
    lrs: Dict[str, Path] = {}
    for path in _images(lr_dir, f'set {name}: LR'):
        lrs.setdefault(re.sub(rf'x{scale}$', '', path.stem), path)
        lrs.setdefault(path.stem, path)
    missing = [p for p in hrs if p.stem not in lrs]
    if missing:
        raise ElanError(f'{missing[0]} has no LR image in {lr_dir} (looked for {missing[0].stem}.* and '
                        f'{missing[0].stem}x{scale}.*; {len(missing)} HR image(s) without one)')
    return TestSet(name, [ImagePair(p.stem, p, lrs[p.stem]) for p in hrs], source)


def set_from_folder(folder: Path, scale: int) -> TestSet:
    """The test set of one ``-i`` folder (the module docstring's layouts)."""
    if not folder.is_dir():
        raise ElanError(f'-i {shown_path(folder)}: no such folder or option file')
    gt_dirs = sorted(p for p in folder.glob('GTmod*') if p.is_dir())
    if gt_dirs and (folder / f'LRbicx{scale}').is_dir():
        return pair_folders(folder.name, gt_dirs[0], folder / f'LRbicx{scale}', scale,
                            f'{gt_dirs[0].name} + LRbicx{scale}')
    if (folder / 'HR').is_dir():
        lr_dir = folder / 'LR_bicubic' / f'X{scale}'
        if lr_dir.is_dir():
            return pair_folders(folder.name, folder / 'HR', lr_dir, scale, f'HR + LR_bicubic/X{scale}')
        folder = folder / 'HR'
    name = folder.parent.name if folder.name in ('HR', 'GT') or folder.name.startswith('GTmod') else folder.name
    return pair_folders(name, folder, None, scale, f'HR images; LR made by MATLAB bicubic 1/{scale}')


def sets_from_options(path: Path, scale: int) -> List[TestSet]:
    """The test sets of an option file's ``datasets`` (those with ``dataroot_gt``); ElanError if it has none,
    uses another scale, or keeps a set in LMDB."""
    import yaml

    try:
        opt = yaml.safe_load(path.read_text(encoding='utf-8')) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ElanError(f'-i {shown_path(path)}: cannot read this option file ({err})') from err
    if 'scale' in opt and int(opt['scale']) != scale:
        raise ElanError(f'-i {path}: its scale is {opt["scale"]}, not --scale {scale}')
    sets = []
    for key, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict) or 'dataroot_gt' not in dataset or key == 'train':
            continue
        backend = (dataset.get('io_backend') or {}).get('type', 'disk')
        if backend != 'disk':
            raise ElanError(f'-i {path}: datasets:{key} is read from {backend}; elan compare reads image folders: '
                            'give -i the folders of its images instead')
        lq = dataset.get('dataroot_lq')
        sets.append(pair_folders(str(dataset.get('name', key)), Path(dataset['dataroot_gt']),
                                 Path(lq) if lq else None, scale,
                                 f'{path.name}: {dataset["dataroot_gt"]}' + (f' + {lq}' if lq else '')))
    if not sets:
        raise ElanError(f'-i {path}: no test dataset with dataroot_gt in its datasets')
    return sets


def find_sets(inputs: Sequence[Path], scale: int) -> List[TestSet]:
    """The test sets of all ``-i`` inputs, names made unique (``name_2`` ...)."""
    sets: List[TestSet] = []
    for inp in inputs:
        is_option_file = inp.suffix.lower() in ('.yml', '.yaml')
        if is_option_file and not inp.is_file():
            raise ElanError(f'-i {shown_path(inp)}: no such option file')
        sets += sets_from_options(inp, scale) if is_option_file else [set_from_folder(inp, scale)]
    seen: Dict[str, int] = {}
    for test_set in sets:
        seen[test_set.name] = seen.get(test_set.name, 0) + 1
        if seen[test_set.name] > 1:
            test_set.name = f'{test_set.name}_{seen[test_set.name]}'
    return sets


def load_pair(pair: ImagePair, scale: int) -> Tuple[np.ndarray, np.ndarray]:
    """(HR, LR) of one test image as uint8 BGR arrays, the HR image exactly LR size times ``scale``.

    Raises:
        ElanError: a file that cannot be read, or LR/HR sizes that do not fit ``scale`` (naming both files).
    """
    from elan_arch.utils.images import bicubic_downscale, mod_crop, read_image

    hr = read_image(pair.hr)
    if pair.lr is None:
        hr = mod_crop(hr, scale)
        if hr.size == 0:
            raise ElanError(f'{pair.hr}: smaller than {scale} pixels on a side')
        return hr, bicubic_downscale(hr, scale)
    lr = read_image(pair.lr)
    (h, w), (lh, lw) = hr.shape[:2], lr.shape[:2]
    if not (0 <= h - lh * scale < scale and 0 <= w - lw * scale < scale):
        raise ElanError(f'{pair.lr} is {lw}x{lh} but {pair.hr} is {w}x{h}: at x{scale} the HR image must be '
                        f'{lw * scale}x{lh * scale} (up to {scale - 1} more pixels, which are cropped); '
                        'is it the LR image of another scale or another photo?')
    return hr[:lh * scale, :lw * scale], lr
