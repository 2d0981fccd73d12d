"""``elan prepare demo``: a small real DIV2K-layout dataset from the photographs in scikit-image's wheel.

Layout under ``root`` (default ``datasets/demo``)::

    DIV2K_train_HR/0001.png ... 0006.png        training photos, DIV2K naming (SOURCES.txt says which)
    DIV2K_train_HR_sub.lmdb/                    } made by prepare_div2k (crop 240, step 120:
    DIV2K_train_LR_bicubic_X{s}_sub.lmdb/       }  the photos are 300-1400 px, DIV2K's are 2K)
    val/HR/<name>.png                           held-out photos, never in the training set
    val/GTmod12/<name>.png, val/LRbicx{s}/      made by prepare_benchmark

The whole tree is built under a temporary name and renamed when complete.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Tuple

from ..errors import ElanError
from ..fileio import PathLike, atomic_path
from .images import read_image, write_png
from .jobs import PrepareSummary
from .prepare_benchmark import prepare_benchmark
from .prepare_div2k import HR_FOLDER, prepare_div2k

# RGB photographs shipped inside scikit-image's wheel (public domain or CC0; see skimage/data/README).
TRAIN_PHOTOS: Tuple[str, ...] = ('astronaut.png', 'coffee.png', 'rocket.jpg', 'hubble_deep_field.jpg', 'ihc.png',
                                 'retina.jpg')
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
        sources = []
        for index, name in enumerate(TRAIN_PHOTOS, 1):
            write_png(tmp / HR_FOLDER / f'{index:04d}.png', read_image(skimage_photo(name)))
            sources.append(f'{HR_FOLDER}/{index:04d}.png  skimage/data/{name}\n')
        for name in VAL_PHOTOS:
            write_png(tmp / 'val' / 'HR' / f'{Path(name).stem}.png', read_image(skimage_photo(name)))
            sources.append(f'val/HR/{Path(name).stem}.png  skimage/data/{name}\n')
        (tmp / 'SOURCES.txt').write_text(''.join(sources))
        summary = prepare_div2k(tmp, scales=scales, crop_size=DEMO_CROP_SIZE, step=DEMO_STEP, workers=workers,
                                progress=progress)
        summary.add(prepare_benchmark(tmp / 'val', scales=scales, workers=workers, progress=progress))
    summary.outputs = [out.replace(str(tmp), str(root)) for out in summary.outputs]
    summary.seconds = time.perf_counter() - start
    return summary
