"""``elan compare`` end to end on small sets (CPU): the files it writes, what the page refers to, the figures'
box, and bad input (messages naming the file, the other models still compared, exit status 2 for usage
faults)."""
from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.registry import ARCH_REGISTRY

from elan_arch.archs.elan_arch import ELAN
from elan_arch.cli import main
from elan_arch.compare.figures import clip_box, disagreement_box, parse_crop
from elan_arch.compare.models import bicubic_upscale
from elan_arch.compare.page import referenced_files
from elan_arch.compare.specs import parse_model, parse_net, split_items
from elan_arch.utils.images import bicubic_downscale

TINY = 'type=ELAN,upscale=4,c_elan=15,m_elan=2,n_share=1,window_sizes=[4,8,16]'


@ARCH_REGISTRY.register()
class FailsOnWide(nn.Module):
    """Nearest-neighbour x4 that raises on inputs wider than high: a model that fails on one image."""

    def __init__(self, upscale: int = 4) -> None:
        super().__init__()
        self.upscale = upscale
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > x.shape[-2]:
            raise RuntimeError('this network only takes portrait images')
        return nn.functional.interpolate(x, scale_factor=self.upscale, mode='nearest') * self.gain


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


@pytest.fixture
def hr_set(tmp_path) -> Path:
    folder = tmp_path / 'Tiny'
    folder.mkdir()
    for i, (h, w) in enumerate([(96, 80), (66, 102)]):  # the second is wider than high and not a multiple of 4
        cv2.imwrite(str(folder / f'img{i}.png'), photo(h, w, i))
    return folder


def checkpoint(path: Path, upscale: int = 4, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save({'params': ELAN(upscale=upscale, c_elan=15, m_elan=2).state_dict()}, path)
    return path


def run(*argv) -> int:
    return main(['compare', '--quiet', '--device', 'cpu', *map(str, argv)])


class Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: List[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ('src', 'href') and v and not v.startswith(('data:', '#'))]


def test_page_figures_and_tables(tmp_path, hr_set):
    out = tmp_path / 'out'
    status = run('-i', hr_set, '--scale', 4, '-m', 'bicubic', '-m', f'mine={checkpoint(tmp_path / "w.pth")}',
                 '--net', f'name=random,{TINY}', '-o', out)
    assert status == 0
    results = json.loads((out / 'results.json').read_text())
    assert [m['name'] for m in results['models']] == ['bicubic', 'mine', 'random']
    assert results['models'][1]['params'] == sum(p.numel() for p in ELAN(c_elan=15, m_elan=2).parameters())
    rows = list(csv.DictReader((out / 'results.csv').open()))
    assert len(rows) == 2 * 3 and {r['set'] for r in rows} == {'Tiny'}

    # the figures of a folder of HR images: mod-crop, MATLAB-bicubic LR, basicsr's metrics on the files written
    for img in results['sets'][0]['images']:
        hr = cv2.imread(str(hr_set / f'{img["name"]}.png'))
        hr = hr[:hr.shape[0] // 4 * 4, :hr.shape[1] // 4 * 4]
        folder = out / img['folder']
        assert np.array_equal(cv2.imread(str(folder / 'GT.png')), hr)
        assert np.array_equal(cv2.imread(str(folder / 'LR.png')), bicubic_downscale(hr, 4))
        bicubic = cv2.imread(str(folder / 'bicubic.png'))
        assert np.array_equal(bicubic, bicubic_upscale(bicubic_downscale(hr, 4), 4))
        for model in results['models']:
            sr = cv2.imread(str(folder / f'{model["key"]}.png'))
            row = next(r for r in rows if r['image'] == img['name'] and r['model'] == model['name'])
            psnr = calculate_psnr(sr, hr, crop_border=4, test_y_channel=True)
            assert img['metrics'][model['name']]['psnr'] == psnr
            assert img['metrics'][model['name']]['ssim'] == calculate_ssim(sr, hr, crop_border=4, test_y_channel=True)
            assert float(row['psnr_y']) == pytest.approx(psnr, abs=1e-6)
            diff = cv2.imread(str(folder / f'diff_{model["key"]}.png'))
            assert np.array_equal(diff, cv2.absdiff(sr, hr))
    images = results['sets'][0]['images']
    assert results['sets'][0]['summary']['mine']['psnr'] == pytest.approx(np.mean([i['metrics']['mine']['psnr']
                                                                                   for i in images]))

    # every file the page refers to exists beside it, and the page loads nothing from elsewhere
    html = (out / 'index.html').read_text()
    parser = Sources()
    parser.feed(html)
    data = json.loads(re.search(r'<script type="application/json" id="compare-data">(.*?)</script>', html, re.S)
                      .group(1).replace('<\\/', '</'))
    refs = parser.refs + list(referenced_files(data))
    assert len(refs) >= 2 * (2 + 2 * 3) + 2
    for ref in refs:
        assert not re.match(r'^[a-z]+://|^//', ref), ref
        assert (out / ref).is_file(), ref
    assert 'http://' not in html and 'https://' not in html
    assert sorted(p.name for p in (out / 'figures').iterdir()) == ['Tiny_img0.pdf', 'Tiny_img0.png',
                                                                    'Tiny_img1.pdf', 'Tiny_img1.png']
    assert (out / 'figures' / 'Tiny_img0.pdf').read_bytes()[:5] == b'%PDF-'


def test_basicsr_layout_and_crop(tmp_path):
    root = tmp_path / 'Set'
    hr = photo(48, 60, 3)
    for sub, img, name in (('GTmod12', hr, 'a.png'), ('LRbicx4', bicubic_downscale(hr, 4), 'a.png')):
        (root / sub).mkdir(parents=True)
        cv2.imwrite(str(root / sub / name), img)
    out = tmp_path / 'out'
    assert run('-i', root, '--scale', 4, '-m', 'bicubic', '--net', f'name=r,{TINY}', '--crop', '40,8,16,12',
               '-o', out) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['sets'][0]['source'] == 'GTmod12 + LRbicx4'
    assert results['sets'][0]['images'][0]['figure_box'] == [40, 8, 16, 12]
    assert run('-i', root, '--scale', 4, '-m', 'bicubic', '--net', TINY, '-o', out) == 2  # exists: --force


def test_bad_input(tmp_path, hr_set, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert run('-i', empty, '--scale', 4, '-m', 'bicubic', '--net', TINY, '-o', tmp_path / 'o1') == 2
    assert f'{empty}' in capsys.readouterr().err
    assert not (tmp_path / 'o1').exists()
    assert run('-i', hr_set, '--scale', 4, '-o', tmp_path / 'o2') == 2  # no model
    assert run('-i', hr_set, '--scale', 4, '-m', tmp_path / 'missing.pth', '-o', tmp_path / 'o3') == 2
    assert 'missing.pth' in capsys.readouterr().err

    # LR/HR of mismatched sizes (an x2 LR image in an x4 set): that image is left out, named, exit status 1
    root = tmp_path / 'Mixed'
    for name, (h, w) in (('ok', (48, 48)), ('bad', (48, 60))):
        hr = photo(h, w, 5)
        lr = bicubic_downscale(hr, 2 if name == 'bad' else 4)
        for sub, img in (('GTmod12', hr), ('LRbicx4', lr)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / f'{name}.png'), img)
    x2 = checkpoint(tmp_path / 'x2.pth', upscale=2)
    out = tmp_path / 'o4'
    status = run('-i', root, '--scale', 4, '-m', 'bicubic', '-m', x2, '--net', 'name=portrait,type=FailsOnWide',
                 '--net', f'name=r,{TINY}', '-o', out)
    err = capsys.readouterr().err
    assert status == 1
    assert re.search(r'x2\.pth: an x2 model, not x4', err)  # the checkpoint of another scale, named
    assert f'{root / "LRbicx4" / "bad.png"} is 30x24' in err
    results = json.loads((out / 'results.json').read_text())
    assert [m['name'] for m in results['models']] == ['bicubic', 'portrait', 'r']
    assert [i['name'] for i in results['sets'][0]['images']] == ['ok']
    assert set(results['sets'][0]['images'][0]['metrics']) == {'bicubic', 'portrait', 'r'}
    assert len(results['problems']) == 2

    # a model that fails on one image: the others are compared on it, the failure named on the page and CSV
    out = tmp_path / 'o5'
    assert run('-i', tmp_path / 'Tiny', '--scale', 4, '--net', 'name=portrait,type=FailsOnWide', '--net',
               f'name=r,{TINY}', '-o', out) == 1
    assert re.search(r'portrait failed on .*img1\.png: .*this network only takes portrait images',
                     capsys.readouterr().err)
    rows = {(r['image'], r['model']): r for r in csv.DictReader((out / 'results.csv').open())}
    assert rows[('img1', 'portrait')]['psnr_y'] == '' and 'portrait' in rows[('img1', 'portrait')]['error']
    assert rows[('img1', 'r')]['psnr_y'] != '' and rows[('img0', 'portrait')]['psnr_y'] != ''
    assert 'this network only takes portrait images' in (out / 'index.html').read_text()


def test_model_arguments():
    assert parse_model('bicubic').kind == 'bicubic'
    spec = parse_model('Mine=experiments/run/models/net_g_500.pth')
    assert (spec.name, spec.kind, spec.path) == ('Mine', 'checkpoint', Path('experiments/run/models/net_g_500.pth'))
    assert parse_model('experiments/run/models/net_g_500.pth').label() == 'run@500'
    assert parse_model('model.onnx').kind == 'onnx' and parse_model('options/x.yml').kind == 'options'
    assert split_items('type=SwinIR,depths=[6,6],name=a') == ['type=SwinIR', 'depths=[6,6]', 'name=a']
    net = parse_net('type=SwinIR,upscale=4,depths=[6,6],weights=w.pth,name=S')
    assert net.network == {'type': 'SwinIR', 'upscale': 4, 'depths': [6, 6]}
    assert (net.name, net.weights) == ('S', Path('w.pth'))
    import argparse

    for bad in ('upscale=4', 'type=X,oops'):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_net(bad)


def test_crop_choice():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    other = base.copy()
    other[30:46, 50:66] = 255 - other[30:46, 50:66]  # the two outputs differ only there
    assert disagreement_box([base, other], 16) == (50, 30, 16, 16)
    assert clip_box((70, 60, 32, 32), 64, 80) == (48, 32, 32, 32)
    assert parse_crop('1,2,3,4') == (1, 2, 3, 4)
    for bad in ('1,2,3', '1,2,0,4', 'a,b,c,d'):
        with pytest.raises(ValueError):
            parse_crop(bad)


def test_exported_model_beside_its_checkpoint(tmp_path, hr_set):
    """An ``elan export`` ONNX model runs through its runtime and gives the checkpoint's figures (float32 rounding
    can move a few pixels by one level: well under 0.05 dB here)."""
    pytest.importorskip('onnxruntime')
    from elan_arch.deploy.checkpoint import load_checkpoint
    from elan_arch.deploy.onnx_export import export_onnx

    weights = checkpoint(tmp_path / 'w.pth')
    net, config, _ = load_checkpoint(str(weights))
    export_onnx(net.eval(), tmp_path / 'w.onnx', config)
    out = tmp_path / 'out'
    assert run('-i', hr_set, '--scale', 4, '-m', f'torch={weights}', '-m', f'onnx={tmp_path / "w.onnx"}',
               '--figures', 0, '-o', out) == 0
    results = json.loads((out / 'results.json').read_text())
    assert 'onnxruntime' in results['models'][2]['about'] and results['models'][2]['params'] is None
    for img in results['sets'][0]['images']:
        assert img['metrics']['onnx']['psnr'] == pytest.approx(img['metrics']['torch']['psnr'], abs=0.05)
