"""Tiled inference (elan_arch/inference/upscale.py) and the ``elan upscale`` command."""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.cli import main
from elan_arch.inference.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, blend_weights, tile_starts, upscale_array
from helpers.inference import calibrated, photo, to_tensor
from helpers.rounding import largest_of, pair_bound, sum_bound

SMALL = dict(c_elan=15, m_elan=4, n_share=1, r_expand=2)


class NearestSpy(torch.nn.Module):
    """A pointwise "network" (nearest upscaling) that records the input sizes it is called with."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale, self.sizes = scale, []
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return F.interpolate(x, scale_factor=self.scale, mode='nearest')


@pytest.mark.parametrize('size,tile,overlap', [(160, 64, 32), (208, 64, 16), (48, 64, 32), (2000, 256, 32)])
def test_tiles_are_aligned_cover_and_blend_to_one(size, tile, overlap):
    size = -(-size // 16) * 16
    starts, length = tile_starts(size, tile, overlap, 16)
    assert length == min(tile, size) and starts[0] == 0 and starts[-1] + length == size
    assert all(s % 16 == 0 for s in starts)
    assert all(prev + length - nxt >= overlap for prev, nxt in zip(starts, starts[1:]))
    total = torch.zeros(size * 3)
    for start, weight in zip(starts, blend_weights(starts, length, 3)):
        assert weight.min() > 0
        total[start * 3:(start + length) * 3] += weight
    # float32 weights (rounded once from float64) summed over at most 3 tiles: tests/helpers/rounding.py
    bound = pair_bound(sum_bound(1.0, 3)) * largest_of(total.numel())
    assert torch.allclose(total, torch.ones_like(total), rtol=0, atol=bound)


def test_large_image_only_ever_runs_tile_sized_inputs_and_stitches_exactly():
    # 2000 x 2000: the network sees 256 x 256 tiles only, so its memory is the tile's; a
    # pointwise network shows that blending and row-strip stitching are exact
    img = np.random.default_rng(0).random((2000, 2000, 3), dtype=np.float32)
    spy = NearestSpy(2)
    out = upscale_array(spy, img, 2, 16, tile=256, out_dtype=np.float32)
    assert set(spy.sizes) == {(256, 256)} and len(spy.sizes) == 81
    expected = img.repeat(2, axis=0).repeat(2, axis=1)
    # each output a sum over at most 2 x 3 tiles of a weight times the same value in [0, 1], in float32
    assert np.abs(out - expected).max() < pair_bound(sum_bound(1.0, 2 * 3)) * largest_of(out.size)


def test_one_tile_covering_the_image_equals_untiled_exactly():
    img = photo(20, 27)
    net = calibrated(ELAN(upscale=3, **SMALL), to_tensor(img))
    whole = upscale_array(net, img, 3, net.pad_multiple, tile=0, out_dtype=np.float32)
    assert whole.shape == (60, 81, 3)
    for tile in (32, 64):  # 20x27 pads to 32x32: one 32x32 tile
        assert np.array_equal(upscale_array(net, img, 3, net.pad_multiple, tile=tile, out_dtype=np.float32), whole)


@pytest.mark.slow
def test_default_tile_and_overlap_reach_45_db_on_a_real_photo():
    img = photo(300, 420)  # pads to 304x432: 2x2 tiles of the default 256 with at least 32 overlap
    net = calibrated(ELAN(upscale=2, **ELAN_VARIANTS['ELAN-light']), to_tensor(img))
    assert len(tile_starts(304, DEFAULT_TILE, DEFAULT_OVERLAP, 16)[0]) == 2
    assert len(tile_starts(432, DEFAULT_TILE, DEFAULT_OVERLAP, 16)[0]) == 2
    whole = upscale_array(net, img, 2, 16, tile=0).astype(np.float64)
    tiled = upscale_array(net, img, 2, 16, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP).astype(np.float64)
    psnr = 10 * np.log10(255.**2 / np.mean((whole - tiled)**2))
    print(f'tile {DEFAULT_TILE}, overlap {DEFAULT_OVERLAP}: {psnr:.2f} dB against the whole-image output')
    assert 45 < psnr < 100  # not identical: the tiles really were separate
    assert whole.std() > 20  # an image-like output, not a flat one


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> Path:
    """A small x2 ELAN checkpoint in BasicSR's format, BatchNorm statistics from a real photo."""
    torch.manual_seed(0)
    net = calibrated(ELAN(upscale=2, **SMALL), to_tensor(photo(32, 32)))
    path = tmp_path_factory.mktemp('weights') / 'elan_x2.pth'
    torch.save({'params': net.state_dict()}, path)
    return path


def bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((img[:, :, ::-1] * 255).round().astype(np.uint8))


def test_folder_with_a_corrupt_file_reports_it_and_finishes_the_others(tmp_path, weights, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), bgr(photo(20, 27)))
    cv2.imwrite(str(src / 'b.jpg'), bgr(photo(17, 23, top=200)))
    cv2.imwrite(str(src / 'c.webp'), bgr(photo(16, 16, top=300)), [cv2.IMWRITE_WEBP_QUALITY, 101])
    (src / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)  # a truncated PNG
    (src / 'notes.txt').write_text('not an image')
    code = main(['upscale', '-i', str(src), '-o', str(tmp_path / 'out'), '--weights', str(weights), '--quiet',
                 '--device', 'cpu'])
    err = capsys.readouterr().err
    assert code == 1
    assert 'broken.png cannot be read as an image' in err and 'notes.txt: not an image file' in err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.png', 'b.png', 'c.png']
    net = ELAN(upscale=2, **SMALL)
    net.load_state_dict(torch.load(weights)['params'])
    net.eval()
    for name in ('a.png', 'b.jpg', 'c.webp'):
        lr = cv2.imread(str(src / name))[:, :, ::-1].astype(np.float32) / 255.
        expected = upscale_array(net, lr, 2, 16)[:, :, ::-1]
        assert np.array_equal(cv2.imread(str(tmp_path / 'out' / (Path(name).stem + '.png'))), expected)


def test_folder_pipeline_reports_throughput_and_a_failed_write(tmp_path, weights, capsys, monkeypatch):
    """The folder run with background writers gives the same files as in turn (``--io-threads 0``), says its
    throughput, and a write the disk refuses fails that image alone, naming it, leaving no partial file."""
    from elan_arch.utils import images

    src = tmp_path / 'in'
    src.mkdir()
    for k in range(4):
        cv2.imwrite(str(src / f'{k}.png'), bgr(photo(20, 24, top=60 * k)))
    base = ['upscale', '-i', str(src), '--weights', str(weights), '--quiet', '--device', 'cpu']
    assert main(base + ['-o', str(tmp_path / 'turn'), '--io-threads', '0']) == 0
    assert main(base + ['-o', str(tmp_path / 'piped'), '--io-threads', '2']) == 0
    out = capsys.readouterr().out
    assert re.search(r'upscaled 4 of 4 image\(s\) x2 on cpu .*\n[\d.]+ s: [\d.]+ images/s, [\d.]+ output megapixels/s; '
                     r'network [\d.]+ s, waiting [\d.]+ s for reading and [\d.]+ s for writing \(2 writer threads\)',
                     out)
    for k in range(4):
        assert (tmp_path / 'turn' / f'{k}.png').read_bytes() == (tmp_path / 'piped' / f'{k}.png').read_bytes()

    write_png = images.write_png

    def disk_full_for_2(path, img, *args):
        if '2.png' in path.name:
            path.write_bytes(b'partial')
            raise OSError(28, 'No space left on device')
        write_png(path, img, *args)

    monkeypatch.setattr(images, 'write_png', disk_full_for_2)
    assert main(base + ['-o', str(tmp_path / 'full')]) == 1
    out, err = capsys.readouterr()
    assert 'for writing (0 writer threads)' in out  # on the CPU each image in turn by default
    assert f'{tmp_path / "full" / "2.png"}: cannot be written (No space left on device)' in err
    assert sorted(p.name for p in (tmp_path / 'full').iterdir()) == ['0.png', '1.png', '3.png']
    assert main(base + ['-o', str(tmp_path / 'x'), '--io-threads', '-1']) == 2
    assert 'and --io-threads must be >= 0' in capsys.readouterr().err


@pytest.mark.parametrize('limit', [64 * 64, 8 * 8])
def test_out_of_memory_tries_again_in_smaller_tiles(tmp_path, weights, capsys, monkeypatch, limit):
    """A network that runs out of memory above ``limit`` input pixels: the image is done in tiles of half its
    size (64 once padded to 16, the limit); with no tile small enough, a clear error naming the file."""
    forward = ELAN.forward

    def limited(self, x):
        if x.shape[-2] * x.shape[-1] > limit:
            raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB (pretend)')
        return forward(self, x)

    src = tmp_path / 'a.png'
    cv2.imwrite(str(src), bgr(photo(100, 120)))
    monkeypatch.setattr(ELAN, 'forward', limited)
    args = ['upscale', '-i', str(src), '-o', str(tmp_path / 'b.png'), '--weights', str(weights), '--device', 'cpu']
    if limit == 8 * 8:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert 'trying again in 60-pixel tiles' in err and 'trying again in 30-pixel' not in err
        assert f'{src}: out of memory at 120x100 in 60-pixel tiles; free memory on the device' in err
        assert not (tmp_path / 'b.png').exists()
        return
    assert main(args) == 0
    assert f'{src}: out of memory as a whole; trying again in 60-pixel tiles' in capsys.readouterr().err
    net = ELAN(upscale=2, **SMALL)
    net.load_state_dict(torch.load(weights)['params'])
    lr = cv2.imread(str(src))[:, :, ::-1].astype(np.float32) / 255.
    expected = upscale_array(net.eval(), lr, 2, 16, tile=60, overlap=DEFAULT_OVERLAP)[:, :, ::-1]
    assert np.array_equal(cv2.imread(str(tmp_path / 'b.png')), expected)


@pytest.mark.parametrize('option,mode', [(['--compile'], 'default'),
                                         (['--compile', 'reduce-overhead'], 'reduce-overhead'),
                                         (['--compile', 'bogus'], None)])
def test_compile_mode_reaches_torch_compile(tmp_path, weights, capsys, monkeypatch, option, mode):
    """``--compile [MODE]``: torch.compile in that mode for fixed shapes (recorded here instead of compiling)."""
    calls = []

    def record(net, **kwargs):
        calls.append(kwargs)
        return net

    monkeypatch.setattr(torch, 'compile', record)
    src = tmp_path / 'a.png'
    cv2.imwrite(str(src), bgr(photo(16, 16)))
    args = ['upscale', '-i', str(src), '-o', str(tmp_path / 'b.png'), '--weights', str(weights), '--device', 'cpu']
    if mode is None:
        with pytest.raises(SystemExit):
            main(args + option)
        assert "invalid choice: 'bogus'" in capsys.readouterr().err and calls == []
        return
    assert main(args + option) == 0
    assert calls == [{'dynamic': False, 'mode': mode}] and (tmp_path / 'b.png').exists()


def test_single_image_tiled_with_progress_and_never_overwriting(tmp_path, weights, capsys):
    src = tmp_path / 'a.jpg'
    cv2.imwrite(str(src), bgr(photo(40, 70)))
    before = src.read_bytes()
    out = tmp_path / 'a_x2.png'
    assert main(['upscale', '-i', str(src), '-o', str(out), '--weights', str(weights), '--tile', '32',
                 '--tile-overlap', '16', '--scale', '2']) == 0
    assert cv2.imread(str(out)).shape == (80, 140, 3)
    assert 'tile' in capsys.readouterr().err  # the tqdm bar over tiles
    assert main(['upscale', '-i', str(src), '-o', str(out), '--weights', str(weights)]) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err
    png = tmp_path / 'a.png'
    cv2.imwrite(str(png), bgr(photo(16, 16)))
    png_bytes = png.read_bytes()
    assert main(['upscale', '-i', str(png), '-o', str(png), '--weights', str(weights), '--force']) == 2
    assert 'is an input image and would be overwritten' in capsys.readouterr().err
    assert src.read_bytes() == before and png.read_bytes() == png_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.jpg', 'a.png', 'a_x2.png']  # no temporary files


@pytest.mark.parametrize('case,message', [
    ('scale', 'holds an x2 ELAN but --scale 4 was asked'),
    ('not_elan', 'not an ELAN checkpoint'),
    ('corrupt_input', 'cannot be read as an image'),
    ('half_cpu', '--half needs a CUDA device'),
    ('jpg_output', 'outputs are PNG files'),
    ('missing', 'no such file or folder'),
])
def test_clear_errors(tmp_path, weights, capsys, case, message):
    src = tmp_path / 'a.png'
    cv2.imwrite(str(src), bgr(photo(16, 16)))
    args = ['upscale', '-i', str(src), '-o', str(tmp_path / 'b.png'), '--weights', str(weights), '--device', 'cpu']
    if case == 'scale':
        args += ['--scale', '4']
    elif case == 'not_elan':
        torch.save({'params': torch.nn.Conv2d(3, 3, 3).state_dict()}, tmp_path / 'w.pth')
        args[args.index(str(weights))] = str(tmp_path / 'w.pth')
    elif case == 'corrupt_input':
        src.write_bytes(b'garbage')
    elif case == 'half_cpu':
        args.append('--half')
    elif case == 'jpg_output':
        args[args.index('-o') + 1] = str(tmp_path / 'b.jpg')
    else:
        args[args.index('-i') + 1] = str(tmp_path / 'nope.png')
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'b.png').exists()


@pytest.mark.slow
def test_fused_attention_option(tmp_path, weights, capsys, monkeypatch):
    """``--fused-attention`` runs the window attention as the Triton kernels (here in Triton's interpreter on
    the CPU, as tests/conftest.py sets up without CUDA): the same image as without, to 8-bit rounding; where
    the kernels cannot run, a clear error and no output."""
    from elan_arch.archs import window_kernels

    src = tmp_path / 'a.png'
    cv2.imwrite(str(src), bgr(photo(20, 27)))
    calls = []
    original = window_kernels.fused_window_attention
    monkeypatch.setattr(window_kernels, 'fused_window_attention', lambda *a: calls.append(1) or original(*a))
    args = ['upscale', '-i', str(src), '--weights', str(weights), '--device', 'cpu', '--quiet']
    assert main(args + ['-o', str(tmp_path / 'plain.png')]) == 0 and calls == []
    if not window_kernels.interpreting():
        pytest.skip('the kernels run on CUDA only outside Triton\'s interpreter')
    assert main(args + ['-o', str(tmp_path / 'fused.png'), '--fused-attention']) == 0
    assert 'fused attention' in capsys.readouterr().out and len(calls) == 4  # 4 GMSAs
    plain, fused = (cv2.imread(str(tmp_path / f'{name}.png')).astype(int) for name in ('plain', 'fused'))
    assert plain.shape == (40, 54, 3) and np.abs(plain - fused).max() <= 1
    monkeypatch.delenv('TRITON_INTERPRET')
    assert main(args + ['-o', str(tmp_path / 'no.png'), '--fused-attention']) == 2
    assert '--fused-attention: cannot run the fused attention kernels: they need a CUDA device (here: cpu)' in \
        capsys.readouterr().err
    assert not (tmp_path / 'no.png').exists()


def test_benchmark_script_folder_step(tmp_path, capsys):
    """scripts/benchmark.py's folder throughput step (the images/s figure of docs/performance.md) runs end to end."""
    import argparse
    import importlib.util

    script = Path(__file__).resolve().parents[2] / 'scripts' / 'benchmark.py'
    spec = importlib.util.spec_from_file_location('benchmark_script', script)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    torch.save({'params': benchmark.calibrated_elan_light(benchmark.photo(48)).state_dict()}, tmp_path / 'w.pth')
    args = argparse.Namespace(folder=['3', '16x24'], device='cpu', half=False)
    table = benchmark.folder_throughput(args, tmp_path, tmp_path / 'w.pth')
    rows = [line for line in table.splitlines() if line.startswith('| in turn') or line.startswith('| pipelined')]
    assert len(rows) == 2 and all(float(cell) >= 0 for row in rows for cell in row.strip('|').split('|')[1:])
    assert 'a folder of 3 photos of 16x24' in table
    assert sorted(p.name for p in (tmp_path / 'out_0').iterdir()) == ['0000.png', '0001.png', '0002.png']
    assert cv2.imread(str(tmp_path / 'out_0' / '0001.png')).shape == (64, 96, 3)


def upscale_file(tmp_path: Path, weights: Path, name: str, img: np.ndarray) -> np.ndarray:
    """``elan upscale`` of ``img`` written as ``name`` (OpenCV's layout): the output PNG as decoded unchanged."""
    src, dst = tmp_path / name, tmp_path / f'{Path(name).stem}_out.png'
    cv2.imwrite(str(src), img)
    assert main(['upscale', '-i', str(src), '-o', str(dst), '--weights', str(weights), '--device', 'cpu',
                 '--quiet']) == 0
    return cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)


def test_grey_and_16_bit_inputs_keep_their_kind(tmp_path, weights):
    """Grey in, grey out; 16 bits in, 16 bits out (the same image as 8 bits, to rounding); colour 16-bit too."""
    colour8 = bgr(photo(20, 26))
    grey8 = cv2.cvtColor(colour8, cv2.COLOR_BGR2GRAY)
    out8 = upscale_file(tmp_path, weights, 'grey8.png', grey8)
    out16 = upscale_file(tmp_path, weights, 'grey16.png', grey8.astype(np.uint16) * 257)  # the same values
    assert out8.shape == out16.shape == (40, 52) and out8.dtype == np.uint8 and out16.dtype == np.uint16
    assert np.abs(out16.astype(np.int64) - out8.astype(np.int64) * 257).max() <= 257
    # grey is the colour network's output on three equal channels, averaged
    as_colour = upscale_file(tmp_path, weights, 'grey_as_colour.png', cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR))
    assert np.abs(as_colour.astype(np.int64).mean(axis=2) - out8).max() <= 1
    colour16 = upscale_file(tmp_path, weights, 'colour16.png', colour8.astype(np.uint16) * 257)
    plain = upscale_file(tmp_path, weights, 'colour8.png', colour8)
    assert colour16.shape == (40, 52, 3) and colour16.dtype == np.uint16
    assert np.abs(colour16.astype(np.int64) - plain.astype(np.int64) * 257).max() <= 257


def nearest_x2(rgb: np.ndarray, dtype: type) -> np.ndarray:
    """A stand-in for the network in :func:`upscale_picture`: nearest x2, quantised as upscale_array does."""
    up = rgb.repeat(2, axis=0).repeat(2, axis=1)
    return up if dtype == np.float32 else (up * np.iinfo(dtype).max).round().astype(dtype)


def test_alpha_is_upscaled_by_the_network_and_the_colour_is_as_without_it(tmp_path, weights):
    colour = bgr(photo(24, 32))
    plain = upscale_file(tmp_path, weights, 'plain.png', colour)
    alpha = np.zeros((24, 32), np.uint8)
    alpha[:, 16:] = 255  # transparent left half, opaque right half
    out = upscale_file(tmp_path, weights, 'rgba.png', np.dstack([colour, alpha]))
    assert out.shape == (48, 64, 4) and np.array_equal(out[..., :3], plain)
    net = ELAN(upscale=2, **SMALL)
    net.load_state_dict(torch.load(weights)['params'])
    mask = np.repeat(alpha[..., None].astype(np.float32) / 255, 3, axis=2)
    expected = upscale_array(net.eval(), mask, 2, 16, out_dtype=np.float32).mean(axis=2)
    assert np.array_equal(out[..., 3], (np.clip(expected, 0, 1) * 255).round().astype(np.uint8))
    flat = upscale_file(tmp_path, weights, 'flat.png', np.dstack([colour, np.full((24, 32), 128, np.uint8)]))
    assert np.array_equal(flat[..., :3], plain) and (flat[..., 3] == 128).all()  # constant: repeated


def test_grey_with_alpha_and_16_bit_alpha_through_a_stand_in_network(tmp_path):
    from elan_arch.inference.image_io import read_picture, upscale_picture

    grey = (np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16)
    alpha = np.zeros((12, 10), np.uint16)
    alpha[6:] = 65535
    cv2.imwrite(str(tmp_path / 'ga16.png'), np.dstack([grey, grey, grey, alpha]))
    picture = read_picture(tmp_path / 'ga16.png')
    assert picture.dtype == np.uint16 and picture.alpha is not None and not picture.grey  # stored as BGRA
    out = upscale_picture(picture, nearest_x2)
    assert out.shape == (24, 20, 4) and out.dtype == np.uint16
    assert np.array_equal(out[..., 0], grey.repeat(2, 0).repeat(2, 1))
    assert np.array_equal(out[..., 3], alpha.repeat(2, 0).repeat(2, 1))
    cv2.imwrite(str(tmp_path / 'g.png'), grey)
    out = upscale_picture(read_picture(tmp_path / 'g.png'), nearest_x2)
    assert out.shape == (24, 20) and np.array_equal(out, grey.repeat(2, 0).repeat(2, 1))


def test_alpha_follows_the_exif_orientation(tmp_path):
    """OpenCV turns the colour of a PNG by its EXIF orientation; the alpha is turned with it."""
    from elan_arch.inference.image_io import read_picture, upscale_picture

    pil = pytest.importorskip('PIL.Image')
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., :3] = (photo(24, 32) * 255).round().astype(np.uint8)
    rgba[:, 16:, 3] = 255  # opaque right half as stored
    image = pil.fromarray(rgba, 'RGBA')
    exif = image.getexif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: the stored right half becomes the bottom
    image.save(tmp_path / 'turned.png', exif=exif)
    picture = read_picture(tmp_path / 'turned.png')
    assert picture.rgb.shape == (32, 24, 3)
    out = upscale_picture(picture, nearest_x2)
    assert out.shape == (64, 48, 4)
    assert (out[:32, :, 3] == 0).all() and (out[32:, :, 3] == 255).all()
    assert np.array_equal(out[..., 2], np.rot90(rgba[..., 0], -1).repeat(2, 0).repeat(2, 1))  # red, turned


def test_unsupported_channels_and_sample_types_are_named(tmp_path, monkeypatch):
    from elan_arch.utils.errors import ElanError
    from elan_arch.inference.image_io import read_picture

    decoded = {'array': np.zeros((4, 4, 2), np.uint8)}
    (tmp_path / 'odd.png').write_bytes(b'stand-in')
    monkeypatch.setattr(cv2, 'imdecode', lambda buffer, flags=None: decoded['array'])
    with pytest.raises(ElanError, match=r'odd\.png: 2 channels are not supported'):
        read_picture(tmp_path / 'odd.png')
    decoded['array'] = np.zeros((4, 4, 3), np.int32)
    with pytest.raises(ElanError, match=r'odd\.png: samples of type int32 are not supported'):
        read_picture(tmp_path / 'odd.png')


def damaged_copies(folder: Path) -> dict:
    """In ``folder``: an intact PNG and JPEG, and damaged ones: a JPEG and a PNG cut at two thirds (as an
    interrupted download leaves them), a JPEG with bytes overwritten mid-scan and a TIFF likewise."""
    folder.mkdir(exist_ok=True)
    img = bgr(photo(48, 40))
    files = {}
    for ext in ('.png', '.jpg', '.tif'):
        data = cv2.imencode(ext, img)[1].tobytes()
        kind = ext[1:]
        if ext != '.tif':
            files[f'good_{kind}{ext}'] = data
            files[f'cut_{kind}{ext}'] = data[:len(data) * 2 // 3]
        if ext != '.png':
            flipped, at = bytearray(data), len(data) * (7 if ext == '.jpg' else 3) // 10  # in the coded pixels
            for k in range(5):
                flipped[at + 17 * k] ^= 0x55
            files[f'corrupt_{kind}{ext}'] = bytes(flipped)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_damaged_inputs_fail_by_name_and_the_others_are_written(tmp_path, weights, capfd):
    """OpenCV decodes a truncated or corrupt JPEG with grey where data is missing, and only libjpeg's warning on
    stderr says so: each damaged file fails by name with no output, the intact ones are upscaled, exit 1."""
    damaged_copies(tmp_path / 'in')
    args = ['upscale', '-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--weights', str(weights),
            '--device', 'cpu', '--quiet']
    assert main(args) == 1
    err = capfd.readouterr().err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['good_jpg.png', 'good_png.png']
    for name in ('cut_jpg.jpg', 'cut_png.png', 'corrupt_jpg.jpg', 'corrupt_tif.tif'):
        assert re.search(rf'failed: \S*{re.escape(name)} (cannot be read as an image|is damaged)', err), err
    assert 'Corrupt JPEG data' in err and 'truncated' in err and 'Traceback' not in err
    assert re.search(r'4 image\(s\) failed', err)


def test_a_truncated_jpeg_alone_is_an_error_and_writes_nothing(tmp_path, weights, capfd):
    damaged_copies(tmp_path)
    for name in ('cut_jpg.jpg', 'cut_png.png', 'corrupt_jpg.jpg'):
        out = tmp_path / f'{name}.png'
        assert main(['upscale', '-i', str(tmp_path / name), '-o', str(out), '--weights', str(weights),
                     '--device', 'cpu', '--quiet']) == 2
        err = capfd.readouterr().err
        error = err.splitlines()[-1]  # after the loader's note on the windows a bare state_dict cannot tell
        assert error.startswith(f'elan upscale: error: {tmp_path / name} ') and 'replace it with a good copy' in error
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_allow_damaged_upscales_what_still_decodes_and_says_so(tmp_path, weights, capfd):
    damaged_copies(tmp_path / 'in')
    (tmp_path / 'in' / 'cut_png.png').unlink()
    (tmp_path / 'in' / 'good_jpg.jpg').unlink()
    assert main(['upscale', '-i', str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--weights', str(weights),
                 '--device', 'cpu', '--quiet', '--allow-damaged']) == 1  # cut.jpg does not decode at all
    err = capfd.readouterr().err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['corrupt_jpg.png', 'corrupt_tif.png',
                                                                   'good_png.png']
    assert re.search(r'WARNING: \S*corrupt_jpg\.jpg is DAMAGED \(Corrupt JPEG data', err)
    assert 'WARNING: 2 damaged input(s) upscaled anyway' in err and re.search(r'failed: \S*cut_jpg\.jpg', err)


def test_decoder_messages_are_sorted_from_other_output():
    from elan_arch.utils.images import damage_in

    printed = ('Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n'
               'libpng warning: iCCP: known incorrect sRGB profile\n'
               ' 40%|####      | 2/5 [00:01<00:01]\r'
               '[ERROR:0@0.1] global grfmt_tiff.cpp:117 TIFF_Error Using code not yet in table\n')
    damage, others = damage_in(printed)
    assert damage == ['Corrupt JPEG data: 3 extraneous bytes before marker 0xd9',
                      '[ERROR:0@0.1] global grfmt_tiff.cpp:117 TIFF_Error Using code not yet in table']
    assert ''.join(others) == 'libpng warning: iCCP: known incorrect sRGB profile\n 40%|####      | 2/5 [00:01<00:01]\r'


def test_an_intact_file_decodes_as_opencv_reads_it_and_other_stderr_output_passes(tmp_path, capfd):
    from elan_arch.utils import images

    damaged_copies(tmp_path)
    for name in ('good_png.png', 'good_jpg.jpg'):
        assert np.array_equal(images.read_image(tmp_path / name), cv2.imread(str(tmp_path / name)))
    real = cv2.imdecode

    def chatty(buffer, flags):  # another thread printing while the decoder runs
        os.write(2, b'progress 50%\r')
        return real(buffer, flags)

    try:
        cv2.imdecode = chatty
        images.read_image(tmp_path / 'good_png.png')
    finally:
        cv2.imdecode = real
    assert capfd.readouterr().err == 'progress 50%\r'


def test_tile_zero_is_refused(tmp_path, weights, capsys):
    cv2.imwrite(str(tmp_path / 'a.png'), bgr(photo(16, 16)))
    assert main(['upscale', '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'b.png'), '--weights', str(weights),
                 '--device', 'cpu', '--tile', '0']) == 2
    assert 'use no --tile for whole images' in capsys.readouterr().err and not (tmp_path / 'b.png').exists()
