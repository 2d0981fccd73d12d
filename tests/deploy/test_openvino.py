"""OpenVINO (elan_arch/deploy/openvino_runtime.py, ``elan export --format openvino``, ``elan upscale --openvino``).

A small ELAN-light-shaped network (2 ELABs: unshifted and shifted windows, a sharing GMSA) with BatchNorm
statistics measured on a photo, exported once per module; outputs against PyTorch float32 at untraced, odd
sizes, whole and tiled.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.cli import main
from elan_arch.deploy.onnx_export import TOLERANCE
from elan_arch.inference.backends import load_backend
from elan_arch.inference.upscale import upscale_array
from elan_arch.utils.errors import ElanError
from helpers.inference import calibrated, photo, to_tensor
from helpers.networks import no_temp_files

pytest.importorskip('openvino')
SMALL_LIGHT = dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    """(network, checkpoint path, IR path), the IR written by ``elan export``."""
    root = tmp_path_factory.mktemp('openvino')
    torch.manual_seed(0)
    net = calibrated(ELAN(upscale=4, **SMALL_LIGHT), to_tensor(photo(48, 64)))
    weights = root / 'net.pth'
    torch.save({'params': net.state_dict()}, weights)
    assert main(['export', str(weights), str(root / 'net.xml'), '--window-sizes', '4', '8', '16']) == 0
    return net, weights, root / 'net.xml'


def test_export_writes_an_ir_with_metadata(model):
    _, _, xml = model
    assert xml.is_file() and xml.with_suffix('.bin').is_file()
    assert no_temp_files(xml.parent)
    backend = load_backend(openvino=str(xml))
    assert (backend.scale, backend.pad_multiple, backend.kind) == (4, 16, 'openvino')
    assert backend.net.precision == 'float32' and 'float32' in backend.where


@pytest.mark.parametrize('size', [(19, 13), (33, 40)])
def test_outputs_match_pytorch_float32(model, size):
    net, _, xml = model
    x = to_tensor(photo(*size))
    with torch.inference_mode():
        expected = net(x)
    got = load_backend(openvino=str(xml)).net(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < TOLERANCE[torch.float32]


def test_tiled_upscale_matches_pytorch_tiles(model):
    net, _, xml = model
    img = photo(40, 56)
    expected = upscale_array(net.eval(), img, 4, 16, tile=32, overlap=16, out_dtype=np.float32)
    got = upscale_array(load_backend(openvino=str(xml)).net, img, 4, 16, tile=32, overlap=16, out_dtype=np.float32)
    assert np.abs(got - expected).max() < TOLERANCE[torch.float32]


def test_bf16_precision_hint_differs_but_stays_close(model):
    # OpenVINO's bf16 hint really changes the arithmetic (default f32 here); a few 8-bit levels at most
    net, _, xml = model
    x = to_tensor(photo(32, 32))
    from elan_arch.deploy.openvino_runtime import OpenVinoNetwork

    f32, bf16 = OpenVinoNetwork(xml)(x), OpenVinoNetwork(xml, precision='bfloat16')(x)
    with torch.inference_mode():
        expected = net(x)
    assert (f32 - expected).abs().max() < TOLERANCE[torch.float32]
    assert 1e-4 < (bf16 - expected).abs().max() < 0.05


def test_upscale_openvino_against_weights(model, tmp_path):
    _, weights, xml = model
    src = tmp_path / 'in.png'
    cv2.imwrite(str(src), (photo(21, 30)[..., ::-1] * 255).round().astype(np.uint8))
    assert main(['upscale', '-i', str(src), '-o', str(tmp_path / 'ov.png'), '--openvino', str(xml), '--quiet']) == 0
    assert main(['upscale', '-i', str(src), '-o', str(tmp_path / 'pt.png'), '--weights', str(weights), '--device',
                 'cpu', '--window-sizes', '4', '8', '16', '--quiet']) == 0
    a, b = (cv2.imread(str(tmp_path / f'{n}.png')).astype(int) for n in ('ov', 'pt'))
    assert a.shape == (84, 120, 3) and np.abs(a - b).max() <= 1


def test_refusals(model, tmp_path, capsys):
    _, weights, xml = model
    assert main(['export', str(weights), str(tmp_path / 'x.onnx'), '--format', 'openvino']) == 2
    assert 'name OUT *.xml' in capsys.readouterr().err
    assert main(['export', str(weights), str(tmp_path / 'x.xml'), '--half']) == 2
    assert '--half: ONNX options, not for --format openvino' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ElanError, match='--compile'):
        load_backend(openvino=str(xml), compile_mode='default')
    lonely = tmp_path / 'lonely.xml'
    lonely.write_text(xml.read_text())
    with pytest.raises(ElanError, match='lonely.bin'):
        load_backend(openvino=str(lonely))
    with pytest.raises(ElanError, match='no such OpenVINO IR'):
        load_backend(openvino=str(tmp_path / 'missing.xml'))


def test_bench_rows():
    # elan bench --backends openvino: exported, run, compared with PyTorch float32 on the photo
    from elan_arch.bench.backends import measure_backends

    net = ELAN(upscale=2, c_elan=15, m_elan=2, n_share=1).eval()
    results, anchor = measure_backends(['torch', 'openvino'], net, ELAN(upscale=2, c_elan=15, m_elan=2).eval(),
                                       (20, 27), 1, 1, 0, False)
    openvino = results[1]
    assert openvino.error is None and len(openvino.latencies) == 1 and anchor.latencies
    assert openvino.max_levels <= 1 and openvino.mean_levels < 0.01
