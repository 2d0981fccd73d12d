"""``elan upscale -i IN -o OUT --weights W`` (or ``--onnx``/``--openvino`` MODEL): super-resolve one
image or a folder of images to PNG; the model is loaded by :func:`elan_arch.inference.backends.backend_from_args`.

A folder runs as a pipeline (:mod:`elan_arch.inference.pipeline`): the next image is decoded and finished
ones are encoded and written in background threads while the network runs, and the run ends with its
throughput and where the time went."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Tuple

from elan_arch.utils.errors import ElanError

if TYPE_CHECKING:
    import numpy as np

    from elan_arch.inference.image_io import Picture

Job = Tuple[Path, Path]  # (input image, output PNG)


def register(subparsers: argparse._SubParsersAction) -> None:
    from elan_arch.cli.options import add_device_options, add_network_options
    from elan_arch.inference.backends import add_backend_options
    from elan_arch.inference.upscale import DEFAULT_OVERLAP, DEFAULT_TILE
    from elan_arch.inference.pipeline import default_writers

    parser = subparsers.add_parser(
        'upscale',
        description='Upscale one image (PNG/JPEG/WebP/...) or every image directly inside a folder to PNG with '
        'an ELAN checkpoint (BasicSR, the authors\', traiNNer-redux or safetensors; variant and scale are read from '
        'the weights) run by PyTorch (float32, or bfloat16 with --bf16), or with a model exported by `elan export` '
        'run by onnxruntime, OpenVINO or ncnn. '
        'Large images can be processed in overlapping tiles, blended without seams, so memory depends on the '
        'tile size rather than the image size. Inputs are never overwritten; outputs are written atomically.')
    parser.add_argument('-i', '--input', required=True, type=Path, help='an image file, or a folder of images')
    parser.add_argument('-o', '--output', required=True, type=Path,
                        help='output .png file (or an existing folder) for one image; output folder for a folder')
    add_backend_options(parser)
    parser.add_argument('--scale', type=int, help='expected upscale factor: refuse weights of another scale')
    add_network_options(parser, '--weights')
    parser.add_argument('--tile', type=int, nargs='?', const=DEFAULT_TILE, metavar='N',
                        help=f'process in N x N tiles (input pixels, rounded up to a multiple of 16, N >= 1); '
                        f'--tile alone: {DEFAULT_TILE}; without --tile: the whole image at once')
    parser.add_argument('--tile-overlap', type=int, default=DEFAULT_OVERLAP, metavar='M',
                        help=f'minimum overlap of neighbouring tiles in input pixels (default: {DEFAULT_OVERLAP})')
    add_device_options(parser, 'auto', 'torch.compile the network (slower on CPU in our measurements)')
    parser.add_argument('--fused-attention', action='store_true',
                        help='window attention as the fused Triton kernels (CUDA; opt-in, not yet timed on a GPU: '
                        'see docs/upscaling.md; not under --compile, which fuses the attention itself)')
    parser.add_argument('--io-threads', type=int, metavar='N',
                        help='threads that encode and write PNGs while the network runs, besides one that reads '
                        'the next image ahead; 0: read, upscale and write each image in turn. Default: '
                        f'{default_writers()} here (the CPU cores but one, up to 8) when the network runs on a GPU, '
                        '0 on the CPU, whose cores the network uses itself')
    parser.add_argument('--allow-damaged', action='store_true',
                        help='upscale damaged inputs that still decode (a truncated or corrupt JPEG, TIFF...) with a '
                        'warning each, instead of failing them; the damage shows in the output')
    parser.add_argument('--force', action='store_true', help='replace output files that already exist')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)


def plan_jobs(inp: Path, out: Path, force: bool) -> Tuple[List[Job], List[Path]]:
    """The (input, output) pairs for ``-i inp -o out`` and the non-image files skipped.

    Raises:
        ElanError: missing input, empty folder, an output that is an input or exists
            without ``force``, or two inputs that would write the same output.
    """
    from elan_arch.utils.images import IMAGE_EXTENSIONS
    from elan_arch.utils.fileio import check_output_free

    skipped: List[Path] = []
    if inp.is_file():
        if out.is_dir():
            out = out / f'{inp.stem}.png'
        elif out.suffix.lower() != '.png':
            raise ElanError(f'-o {out}: outputs are PNG files; name it *.png (or give an existing folder)')
        jobs = [(inp, out)]
    elif inp.is_dir():
        if out.exists() and not out.is_dir():
            raise ElanError(f'-o {out} is a file; for a folder of inputs give an output folder')
        if out.resolve() == inp.resolve():
            raise ElanError(f'-o {out} is the input folder; write the results to another folder')
        files = sorted(p for p in inp.iterdir() if p.is_file() and not p.name.startswith('.'))
        skipped = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
        jobs = [(p, out / f'{p.stem}.png') for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not jobs:
            raise ElanError(f'-i {inp}: no images in this folder (looked for {", ".join(IMAGE_EXTENSIONS)})')
    else:
        raise ElanError(f'-i {inp}: no such file or folder')
    seen = {}
    inputs = {src.resolve() for src, _ in jobs}
    for src, dst in jobs:
        if dst.resolve() in inputs:
            raise ElanError(f'{dst} is an input image and would be overwritten; choose another -o')
        if dst in seen:
            raise ElanError(f'{seen[dst]} and {src} would both be written to {dst}; rename one of them')
        seen[dst] = src
        check_output_free(dst, force)
    return jobs, skipped


def _out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is PyTorch's out-of-memory error (CUDA's ``OutOfMemoryError`` is a RuntimeError; the CPU
    allocator says "can't allocate memory")."""
    return 'out of memory' in str(err) or "can't allocate memory" in str(err)


def _upscale(net, src: Path, rgb: np.ndarray, scale: int, multiple: int, args: argparse.Namespace,
             out_dtype: type) -> np.ndarray:
    """The (H*scale, W*scale, 3) RGB output of ``rgb`` in ``out_dtype``
    (as :func:`~elan_arch.inference.upscale.upscale_array`).

    Out of memory, it tries again in tiles, saying so: :data:`~elan_arch.inference.upscale.DEFAULT_TILE` pixels (at most
    half the image) after a whole image, half the tile after tiles, down to 32 pixels; ElanError (naming ``src``)
    when even those fail.
    """
    import torch
    from tqdm import tqdm

    from elan_arch.inference.upscale import DEFAULT_TILE, upscale_array

    tile = args.tile or 0
    while True:
        try:
            return upscale_array(net, rgb, scale, multiple, tile=tile, overlap=args.tile_overlap,
                                 out_dtype=out_dtype, progress=not args.quiet)
        except RuntimeError as err:
            if not _out_of_memory(err):
                raise
            tried = f'in {tile}-pixel tiles' if tile else 'as a whole'
            tile = tile // 2 if tile else min(DEFAULT_TILE, max(rgb.shape[:2]) // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if tile < 32:
            raise ElanError(f'{src}: out of memory at {rgb.shape[1]}x{rgb.shape[0]} {tried}; free memory on the '
                            'device, or use --device cpu')
        tqdm.write(f'elan upscale: {src}: out of memory {tried}; trying again in {tile}-pixel tiles '
                   '(--tile N chooses the size)', file=sys.stderr)


def _write(dst: Path, out: np.ndarray, force: bool) -> None:
    """Write ``out`` (as :func:`~elan_arch.inference.image_io.upscale_picture` returns it) to ``dst`` as PNG,
    atomically; ElanError naming ``dst`` if the file system refuses."""
    from elan_arch.utils.images import write_png
    from elan_arch.utils.fileio import atomic_path

    try:
        with atomic_path(dst, overwrite=force) as tmp:
            write_png(tmp, out)
    except OSError as err:
        raise ElanError(f'{dst}: cannot be written ({err.strerror or err}); check the disk and the folder') from err


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from elan_arch.inference.upscale import placement
    from elan_arch.inference.image_io import read_picture, upscale_picture
    from elan_arch.inference.pipeline import default_writers, run_pipeline

    if args.tile is not None and args.tile < 1:
        raise ElanError(f'--tile {args.tile}: a tile size must be at least 1; use no --tile for whole images '
                        '(--tile alone: 256-pixel tiles)')
    if args.tile_overlap < 0 or (args.io_threads or 0) < 0:
        raise ElanError('--tile-overlap and --io-threads must be >= 0')
    jobs, skipped = plan_jobs(args.input, args.output, args.force)
    from elan_arch.inference.backends import backend_from_args

    backend = backend_from_args(args)
    net, scale, multiple, where = backend.net, backend.scale, backend.pad_multiple, backend.where
    threads = args.io_threads
    if threads is None:
        threads = default_writers() if placement(net)[0].type == 'cuda' else 0
    for path in skipped:
        print(f'elan upscale: skipped {path}: not an image file', file=sys.stderr)
    output_pixels, damaged = {}, []

    def read(job: Job) -> Picture:
        picture = read_picture(job[0], args.allow_damaged)
        if picture.damage:
            damaged.append(job[0])
            tqdm.write(f'elan upscale: WARNING: {job[0]} is DAMAGED ({picture.damage}); upscaling it anyway '
                       '(--allow-damaged): the damage will show in its output', file=sys.stderr)
        return picture

    def compute(job: Job, picture: Picture) -> np.ndarray:
        out = upscale_picture(picture, lambda rgb, dtype: _upscale(net, job[0], rgb, scale, multiple, args, dtype))
        output_pixels[job] = out.shape[0] * out.shape[1]
        return out

    def failed(job: Job, err: ElanError) -> None:
        if len(jobs) == 1:
            raise err
        tqdm.write(f'elan upscale: failed: {err}', file=sys.stderr)

    with tqdm(total=len(jobs), unit='image', disable=args.quiet or len(jobs) == 1) as bar:
        stats = run_pipeline(jobs, read, compute,
                             lambda job, out: _write(job[1], out, args.force), threads,
                             on_error=failed, on_done=lambda job: bar.update())
    destination = args.output if args.input.is_dir() else jobs[0][1]
    done, wall = len(stats.done), max(stats.wall, 1e-9)
    megapixels = sum(output_pixels[job] for job in stats.done) / 1e6
    print(f'upscaled {done} of {len(jobs)} image(s) x{scale} on {where} -> {destination}')
    print(f'{stats.wall:.1f} s: {done / wall:.2f} images/s, {megapixels / wall:.2f} output megapixels/s; '
          f'network {stats.compute:.1f} s, waiting {stats.read_wait:.1f} s for reading and {stats.write_wait:.1f} s '
          f'for writing ({threads} writer thread{"s" if threads != 1 else ""})')
    if damaged:
        print(f'elan upscale: WARNING: {len(damaged)} damaged input(s) upscaled anyway (--allow-damaged): '
              f'{", ".join(map(str, damaged))}', file=sys.stderr)
    if stats.failed:
        names = ', '.join(str(job[0]) for job, _ in stats.failed)
        print(f'elan upscale: {len(stats.failed)} image(s) failed: {names}', file=sys.stderr)
        return 1
    return 0
