"""``elan prepare demo``: a small real DIV2K-layout dataset from the photographs in scikit-image's wheel.

Layout under ``root`` (default ``datasets/demo``)::

    DIV2K_train_HR/0001.png ... 0009.png        training photos, DIV2K naming (SOURCES.txt says which)
    DIV2K_train_HR_sub.lmdb/                    } made by prepare_div2k (crop 240, step 120:
    DIV2K_train_LR_bicubic_X{s}_sub.lmdb/       }  the photos are 300-640 px, DIV2K's are 2K)
    val/HR/<name>.png                           held-out photos, never in the training set
    val/GTmod12/<name>.png, val/LRbicx{s}/      made by prepare_benchmark

The whole tree is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Tuple

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import PathLike, atomic_path
from elan_arch.utils.images import read_image, write_png
from elan_arch.prepare.jobs import PrepareSummary
from elan_arch.prepare.benchmark import prepare_benchmark
from elan_arch.prepare.div2k import HR_FOLDER, prepare_div2k

# Photographs shipped inside scikit-image's wheel (public domain or CC0; see skimage/data/README). Training:
# everyday scenes and natural textures (the grey ones are read as 3 equal channels; PSNR is measured on Y).
# The wheel's astronomy, microscopy and retina pictures are left out: 900-1400 px, they made 75% of the crops
# of an earlier list (with ihc) and taught the network dark, smooth fields. Same option file and seed, 600
# iterations: 28.71 dB on the held-out photos with that list, 28.95 with this one (bicubic: 28.35).
TRAIN_PHOTOS: Tuple[str, ...] = ('astronaut.png', 'coffee.png', 'rocket.jpg', 'camera.png', 'brick.png', 'grass.png',
                                 'gravel.png', 'coins.png', 'moon.png')
VAL_PHOTOS: Tuple[str, ...] = ('chelsea.png', 'motorcycle_left.png')
DEMO_CROP_SIZE, DEMO_STEP = 240, 120


def skimage_photo(name: str) -> Path:
    """Path of a photograph bundled with scikit-image; :class:`ElanError` if this version lacks it."""
    import skimage

    path = Path(skimage.__file__).parent / 'data' / name
    if not path.is_file():
        raise ElanError(f'scikit-image {skimage.__version__} does not ship {path}, which the demo dataset uses; '
                        f'install a scikit-image release that bundles it (pip install "scikit-image>=0.19")')
    return path


def demo_sources() -> str:
    """The text of ``SOURCES.txt`` that :func:`prepare_demo` writes: one line per photo, its file in the
    dataset and its name in scikit-image's wheel (a dataset with other lines was built from another list)."""
    lines = [f'{HR_FOLDER}/{index:04d}.png  skimage/data/{name}\n' for index, name in enumerate(TRAIN_PHOTOS, 1)]
    lines += [f'val/HR/{Path(name).stem}.png  skimage/data/{name}\n' for name in VAL_PHOTOS]
    return ''.join(lines)


def prepare_demo(root: PathLike = 'datasets/demo', scales: Iterable[int] = (2, 3, 4), workers: int = 1,
                 force: bool = False, progress: bool = True) -> PrepareSummary:
    """Build the demo dataset under ``root`` through :func:`prepare_div2k` and :func:`prepare_benchmark`.

    Raises :class:`ElanError` if ``root`` exists and ``force`` is off (with ``force`` it is replaced).
    """
    start = time.perf_counter()
    root = Path(root)
    with atomic_path(root, overwrite=force, is_dir=True) as tmp:
        (tmp / HR_FOLDER).mkdir()
        (tmp / 'val' / 'HR').mkdir(parents=True)
        for index, name in enumerate(TRAIN_PHOTOS, 1):
            write_png(tmp / HR_FOLDER / f'{index:04d}.png', read_image(skimage_photo(name)))
        for name in VAL_PHOTOS:
            write_png(tmp / 'val' / 'HR' / f'{Path(name).stem}.png', read_image(skimage_photo(name)))
        (tmp / 'SOURCES.txt').write_text(demo_sources())
        summary = prepare_div2k(tmp, scales=scales, crop_size=DEMO_CROP_SIZE, step=DEMO_STEP, workers=workers,
                                progress=progress)
        validation = prepare_benchmark(tmp / 'val', scales=scales, workers=workers, progress=progress)
        validation.crops = 0  # whole held-out photos, not crops: the summary's crops are the training pairs
        summary.add(validation)
    summary.outputs = [out.replace(str(tmp), str(root)) for out in summary.outputs]
    summary.seconds = time.perf_counter() - start
    return summary
