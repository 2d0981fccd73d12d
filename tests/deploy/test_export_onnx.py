"""ONNX export (elan_arch/deploy/onnx_export.py and onnx_graph.py, ``elan export``) and the onnxruntime backend
(``elan upscale --onnx``).

Networks have BatchNorm statistics measured on a photo (``calibrated``), as trained ones do;
the full-size ELAN-light x4 and ELAN x2 are exported once per module in float32 and float16.
"""
from __future__ import annotations

import re
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.cli import main
from elan_arch.utils.errors import ElanError
from elan_arch.deploy.onnx_export import OPSET, TOLERANCE, TRACE_SHAPE, VERIFY_SHAPES, export_onnx, smooth_images
from elan_arch.utils.extras import require
from elan_arch.deploy.onnx_runtime import OnnxNetwork
from helpers.inference import calibrated, photo, to_tensor
from helpers.networks import no_temp_files, save_authors_checkpoint

TINY = dict(c_elan=15, m_elan=4, n_share=1, r_expand=2)
CASES = [('ELAN-light', 4, False), ('ELAN-light', 4, True), ('ELAN', 2, False), ('ELAN', 2, True)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """``get(variant, scale, half)`` -> (network, its BasicSR checkpoint, ExportResult), exported once."""
    root, nets, cache = tmp_path_factory.mktemp('onnx'), {}, {}

    def get(variant: str, scale: int, half: bool):
        if (variant, scale) not in nets:
            torch.manual_seed(0)
            net = calibrated(ELAN(upscale=scale, **ELAN_VARIANTS[variant]), to_tensor(photo(32, 32)))
            weights = root / f'{variant}_x{scale}.pth'
            torch.save({'params': net.state_dict()}, weights)
            nets[variant, scale] = net, weights
        if (variant, scale, half) not in cache:
            net, weights = nets[variant, scale]
            config = dict(upscale=scale, colors=3, **ELAN_VARIANTS[variant], img_range=255.)
            path = root / f'{variant}_x{scale}{"_fp16" if half else ""}.onnx'
            cache[variant, scale, half] = net, weights, export_onnx(net, path, config, half=half)
        return cache[variant, scale, half]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('variant,scale,half', CASES)
def test_onnxruntime_equals_pytorch_at_untraced_sizes(exported, variant, scale, half):
    net, _, result = exported(variant, scale, half)
    dtype = torch.float16 if half else torch.float32
    # the export's own check: two shapes other than the traced one, one odd, both padded
    shapes = [s[:1] + s[2:] for s, _ in result.diffs]
    assert shapes == list(VERIFY_SHAPES) and TRACE_SHAPE not in shapes
    assert any(h % 2 or w % 2 for _, h, w in shapes) and all(h % 16 or w % 16 for _, h, w in shapes)
    assert all(d < TOLERANCE[dtype] for _, d in result.diffs)
    # and an independent one on a real photo at a third size
    runtime = OnnxNetwork(result.path)
    x = to_tensor(photo(13, 21, top=150))
    with torch.no_grad():
        expected = net(x)
    got = runtime(x.to(dtype)).float()
    assert got.shape == (1, 3, 13 * scale, 21 * scale) and 0.1 < expected.std() and expected.abs().max() < 2
    assert (got - expected).abs().max() < (1e-2 if half else 1e-4)
    print(f'{variant} x{scale} {dtype}: max |diff| {(got - expected).abs().max():.2e}')


@pytest.mark.parametrize('variant,scale,half', CASES)
def test_model_file_is_valid_documented_and_dynamic(exported, variant, scale, half):
    _, _, result = exported(variant, scale, half)
    onnx.checker.check_model(str(result.path), full_check=True)
    model = onnx.load(str(result.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['elan.scale'] == str(scale) and meta['elan.variant'] == variant and meta['elan.pad_multiple'] == '16'
    assert 'RGB in [0, 1]' in meta['elan.input'] and meta['elan.dtype'] == ('float16' if half else 'float32')
    assert [o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')] == [OPSET]
    io_type = onnx.TensorProto.FLOAT16 if half else onnx.TensorProto.FLOAT
    for value, dims in ((model.graph.input[0], ['batch', 3, 'height', 'width']),
                        (model.graph.output[0], ['batch', 3, 'out_height', 'out_width'])):
        assert value.type.tensor_type.elem_type == io_type
        assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == dims
    # attention logits and softmax stay float32, also in a float16 model
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    softmax = [n for n in model.graph.node if n.op_type == 'Softmax']
    assert len(softmax) == ELAN_VARIANTS[variant]['m_elan'] // (1 + ELAN_VARIANTS[variant]['n_share']) * 3
    assert {types[n.input[0]] for n in softmax} == {onnx.TensorProto.FLOAT}


def test_inputs_smaller_than_the_padding_match_pytorch(exported):
    net, _, result = exported('ELAN-light', 4, False)
    runtime = OnnxNetwork(result.path)
    for h, w in [(1, 1), (5, 3), (8, 9)]:
        x = smooth_images(1, 3, h, w, seed=h * w)
        with torch.no_grad():
            assert (runtime(x) - net(x)).abs().max() < 1e-4, (h, w)


def test_upscale_onnx_equals_upscale_weights(exported, tmp_path, capsys):
    _, weights, result = exported('ELAN-light', 4, False)
    src = tmp_path / 'in.png'
    cv2.imwrite(str(src), np.ascontiguousarray((photo(20, 36)[:, :, ::-1] * 255).round().astype(np.uint8)))
    for tiles in ([], ['--tile', '16', '--tile-overlap', '8']):
        outs = {}
        for flag, model in (('--weights', weights), ('--onnx', result.path)):
            out = tmp_path / f'{flag[2:]}{len(tiles)}.png'
            assert main(['upscale', '-i', str(src), '-o', str(out), flag, str(model), '--device', 'cpu', *tiles]) == 0
            outs[flag] = cv2.imread(str(out)).astype(int)
        assert outs['--onnx'].shape == (80, 144, 3)
        assert np.abs(outs['--onnx'] - outs['--weights']).max() <= 1  # 1e-4 on [0, 1] at most flips a rounding
    assert 'onnxruntime (CPUExecutionProvider)' in capsys.readouterr().out
    assert main(['upscale', '-i', str(src), '-o', str(tmp_path / 'h.png'), '--onnx', str(result.path), '--half']) == 2
    assert re.search(r'--half\b.*(not for|do(es)? not apply to) --onnx', capsys.readouterr().err)
    assert main(['upscale', '-i', str(src), '-o', str(tmp_path / 's.png'), '--onnx', str(result.path),
                 '--scale', '2']) == 2
    assert 'holds an x4 ELAN but --scale 2' in capsys.readouterr().err


def test_export_command_reads_checkpoints_refuses_overwrite_and_reports_disagreement(tmp_path, capsys):
    net = calibrated(ELAN(upscale=2, **TINY), to_tensor(photo(32, 32)))
    authors, trainner = tmp_path / 'model_x2_5.pt', tmp_path / 'net_g_100.safetensors'
    save_authors_checkpoint(net, authors)
    save_file(calibrated(ELAN(upscale=2, **TINY, rgb_mean=None, img_range=1.), to_tensor(photo(32, 32)))
              .state_dict(), str(trainner))
    out = tmp_path / 'elan.onnx'
    assert main(['export', str(authors), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(authors' checkpoint)" in printed and re.search(r'max \|diff\| \S+ at 1x3x19x13, \S+ at 2x3x9x16', printed)
    before = out.read_bytes()
    assert main(['export', str(trainner), str(out)]) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err and out.read_bytes() == before
    assert main(['export', str(trainner), str(out), '--force']) == 0
    runtime, reference = OnnxNetwork(out), ELAN(upscale=2, **TINY, rgb_mean=None, img_range=1.)
    reference.load_state_dict(elan_arch.deploy.checkpoint.read_checkpoint(str(trainner)).state_dict)
    x = smooth_images(1, 3, 21, 19, seed=5)
    with torch.no_grad():
        assert (runtime(x) - reference.eval()(x)).abs().max() < 1e-4
    # a disagreement beyond the limit fails with the measured numbers and writes nothing
    failed = tmp_path / 'failed.onnx'
    assert main(['export', str(authors), str(failed), '--tolerance', '0']) == 2
    err = capsys.readouterr().err
    assert re.search(r'disagrees with PyTorch: max \|diff\| [0-9.e-]+ at \(1, 3, 19, 13\)', err) and 'limit 0' in err
    assert not failed.exists() and no_temp_files(tmp_path)
    assert main(['export', str(authors), str(failed), '--opset', '99']) == 2
    assert 'ONNX export failed' in capsys.readouterr().err and not failed.exists() and no_temp_files(tmp_path)


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_model(tmp_path):
    # two ELABs of one (LFE, GMSA) pair: an unshifted and a shifted one, in few ops (this exporter is slow)
    net = calibrated(ELAN(upscale=3, c_elan=15, m_elan=2, n_share=0), to_tensor(photo(32, 32)))
    with pytest.raises(ElanError, match=r'--dynamo exports a fixed input shape only \(give --shape or --tile\)'):
        export_onnx(net, tmp_path / 'dynamo.onnx', {}, dynamo=True)
    result = export_onnx(net, tmp_path / 'dynamo.onnx', {}, dynamo=True, shape=(1, 7, 30))
    assert result.metadata['elan.opset'] == '18' and all(d < 1e-4 for _, d in result.diffs)
    x = smooth_images(1, 3, 7, 30, seed=1)
    with torch.no_grad():
        assert (OnnxNetwork(result.path)(x) - net(x)).abs().max() < 1e-4


def _ranks_and_roll_chains(model):
    """Ranks of every tensor the model's shape inference knows, the Concat nodes fed only by Slices of one
    tensor (how torch.roll exports: Slice + Slice + Concat per axis), and the Transposes of float tensors (the
    dynamic graph also transposes its window orders' indices)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField('shape')}
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    transposes = [n for n in model.graph.node
                  if n.op_type == 'Transpose' and types[n.input[0]] == onnx.TensorProto.FLOAT]
    ranks.update({t.name: len(t.dims) for t in model.graph.initializer})
    producer = {out: node for node in model.graph.node for out in node.output}
    rolls = [n.name for n in model.graph.node if n.op_type == 'Concat' and len(n.input) > 1
             and all(i in producer and producer[i].op_type == 'Slice' for i in n.input)
             and len({producer[i].input[0] for i in n.input}) == 1]
    return ranks, rolls, len(transposes)


@pytest.mark.parametrize('fixed', [False, True])
def test_graph_is_written_for_runtimes(tmp_path, fixed):
    # two ELABs: an unshifted and a shifted one (the one the reference rolls), one sharing GMSA each
    net = calibrated(ELAN(upscale=2, **TINY), to_tensor(photo(32, 32)))
    shape = (1, 19, 13) if fixed else None  # odd, padded on both axes
    result = export_onnx(net, tmp_path / 'm.onnx', {}, shape=shape)
    assert all(d < TOLERANCE[torch.float32] for _, d in result.diffs)
    assert [s for s, _ in result.diffs] == ([(1, 3, 19, 13)] if fixed else [(b, 3, h, w) for b, h, w in VERIFY_SHAPES])
    model = onnx.load(str(result.path))
    ranks, rolls, transposes = _ranks_and_roll_chains(model)
    assert ranks and max(ranks.values()) <= 4 and not rolls
    ops = [n.op_type for n in model.graph.node]
    gmsas, groups = TINY['m_elan'], len(net.window_sizes)
    # the maps are computed once per ELAB and reused by its sharing GMSA; BatchNorm is folded
    assert ops.count('Softmax') == gmsas // (1 + TINY['n_share']) * groups and 'BatchNormalization' not in ops
    # per GMSA: pixels to rows and back, and the computing ones' Q^T (fused into the product by runtimes)
    assert transposes <= 2 * gmsas + ops.count('Softmax')
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.output[0])]
    meta = {p.key: p.value for p in model.metadata_props}
    if fixed:  # every shape computation folded: no Shape node left
        assert dims == [[1, 3, 19, 13], [1, 3, 38, 26]] and 'Shape' not in ops and meta['elan.shape'] == '1x3x19x13'
        runtime = OnnxNetwork(result.path)
        with pytest.raises(ElanError, match=r'exported for inputs of shape 1x3x19x13 only, got 1x3x16x16'):
            runtime(torch.zeros(1, 3, 16, 16))
    else:
        assert dims == [['batch', 3, 'height', 'width'], ['batch', 3, 'out_height', 'out_width']]
        assert meta['elan.shape'] == 'dynamic'


def test_fixed_tile_export_matches_pytorch_on_tiles(tmp_path, capsys):
    net = calibrated(ELAN(upscale=2, **TINY), to_tensor(photo(32, 32)))
    weights = tmp_path / 'tiny.pth'
    torch.save({'params': net.state_dict()}, weights)
    out = tmp_path / 'tile32.onnx'
    assert main(['export', str(weights), str(out), '--tile', '32']) == 0
    assert re.search(r'max \|diff\| \S+ at 1x3x32x32 ', capsys.readouterr().out)
    runtime = OnnxNetwork(out)
    assert runtime.fixed_shape == (1, 3, 32, 32)
    for top, left in ((0, 0), (100, 7), (200, 301)):  # tiles of a photo, as a tiling runtime cuts them
        x = to_tensor(photo(32, 32, top=top, left=left))
        with torch.no_grad():
            assert (runtime(x) - net(x)).abs().max() < TOLERANCE[torch.float32], (top, left)
    assert main(['export', str(weights), str(tmp_path / 'b.onnx'), '--shape', '1x4x8x8']) == 2
    assert "--shape '1x4x8x8': expected BATCHx3xHEIGHTxWIDTH" in capsys.readouterr().err
    assert main(['export', str(weights), str(tmp_path / 'b.onnx'), '--shape', '2x3x8', '--force']) == 2
    assert main(['export', str(weights), str(tmp_path / 'b.onnx'), '--tile', '0']) == 2
    assert '--tile 0: must be a positive tile size' in capsys.readouterr().err


@pytest.mark.parametrize('h,w', [(16, 16), (32, 48), (48, 16)])
def test_window_positions_invert_the_fast_paths_window_order(h, w):
    from elan_arch.archs.window_ops import _window_order
    from elan_arch.deploy.onnx_graph import window_positions

    for ws in (2, 4, 8, 16):
        for rolled in (False, True):
            order = _window_order(h, w, ws, rolled, torch.device('cpu'))
            assert torch.equal(order[window_positions(h, w, ws, rolled)], torch.arange(h * w)), (ws, rolled)


def test_session_settings_follow_pytorch(monkeypatch, tmp_path):
    from elan_arch.deploy.onnx_runtime import session_options
    import onnxruntime as ort

    monkeypatch.setenv('OMP_WAIT_POLICY', 'PASSIVE')
    options = session_options(ort)
    assert options.intra_op_num_threads == torch.get_num_threads() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    monkeypatch.delenv('OMP_WAIT_POLICY')
    assert session_options(ort, threads=1).get_session_config_entry('session.intra_op.allow_spinning') == '1'


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # makes `import onnxruntime` fail
    with pytest.raises(ElanError, match=r"elan export needs the Python package 'onnxruntime', which is not installed "
                                        r".*install it with: pip install -e '\.\[onnx\]' in a clone of this "
                                        r'repository, or pip install onnxruntime'):
        require('onnxruntime', 'onnx', 'elan export')


def test_bench_has_an_onnxruntime_row(tmp_path, capsys):
    assert main(['bench', '--size', '20x27', '--runs', '1', '--warmup', '0', '--models', 'elan-light-onnx',
                 '--output-dir', str(tmp_path), '--quiet']) == 0
    table = (tmp_path / 'bench_cpu_x4_20x27.md').read_text()
    row = re.search(r'^\| ELAN-light \(onnxruntime\) \| 601,488 \| n/a \| (\d+) ', table, re.M)
    assert row and int(row.group(1)) >= 0
