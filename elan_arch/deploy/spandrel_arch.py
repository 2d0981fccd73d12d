"""ELAN for spandrel, the model loader of chaiNNer, ComfyUI and other SR tools.

One line makes spandrel open ELAN checkpoints::

    import elan_arch.spandrel_support  # registers ELAN in spandrel.MAIN_REGISTRY (idempotent)

after which ``spandrel.ModelLoader().load_from_file(path)`` returns an
``ImageModelDescriptor`` for the authors', BasicSR's, traiNNer-redux's and this package's
ELAN checkpoints (``.pth``, ``.pt``, ``.safetensors``), whose ``model`` is this package's
:class:`~elan_arch.archs.elan_arch.ELAN` built as :func:`elan_arch.deploy.checkpoint.network_config`
decides: from the file's record, else the option file of its BasicSR run folder, else the tensors
with the window sizes and shifted windows assumed and said so (one line on stderr). spandrel hands
architectures the weights only, so :func:`install` also makes ``ModelLoader.load_state_dict_from_file``
return, for an ELAN's file, a :class:`FileStateDict`: the same weights plus the file's path and record.
Detection needs keys only ELAN's module tree has (any of its ablation variants' LFE and attention), so
spandrel's own architectures are detected as before.

spandrel unpickles ``.pth``/``.pt`` files with an allow-list of tensor and ``OrderedDict``
globals. The authors' checkpoints also hold the optimizer/scheduler state and NumPy scalars
(a ``collections.Counter`` of LR milestones, PSNR values), plain data that the list lacks;
:func:`install` adds exactly those globals to it (``collections.Counter``, NumPy's scalar and
dtype reconstructors and ``_codecs.encode``, which pickle protocol 2 uses for bytes),
none of which can run code. Pass ``allow_authors_pickles=False`` to leave the list alone
(then convert such files with ``elan convert`` first).

Limits: traiNNer-redux's non-default ``norm: true`` weights look like the authors' and
load with the authors' ``img_range`` (255); spandrel passes no metadata to architectures,
so convert them with ``elan convert --img-range 1 --format safetensors`` and use that
file with this package, or load them through :func:`elan_arch.deploy.checkpoint.load_network_from_checkpoint`.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Dict, Optional, Tuple

from elan_arch.archs.elan_arch import ELAN
from elan_arch.deploy.checkpoint import build_announced, variant_name
from elan_arch.deploy.checkpoint_formats import Checkpoint, read_checkpoint
from elan_arch.utils.errors import ElanError
from elan_arch.utils.extras import require

require('spandrel', 'spandrel', 'elan_arch.spandrel_support')

from spandrel import (  # noqa: E402
    MAIN_REGISTRY, Architecture, ArchSupport, ImageModelDescriptor, ModelLoader, ModelTiling, SizeRequirements,
    StateDict)
from spandrel.util import KeyCondition  # noqa: E402

#: The advice ending an assumption announced while spandrel loads (it takes no options).
SPANDREL_HINT = ('if the network was trained otherwise, write a file that records it: '
                 'elan convert FILE OUT.safetensors (with {flags} or --opt FILE)')
#: Keys every ELAN state_dict has (whether to look for a record in the file).
_ELAN_KEYS = ('head.0.weight', 'body.0.modules_gmsa.gmsa_0.project_inp.0.weight', 'tail.0.weight')


class FileStateDict(dict):
    """The state_dict spandrel read from an ELAN's file, with the file's path and what it says about the network
    (:class:`~elan_arch.deploy.checkpoint_formats.Checkpoint`'s ``source``, ``recorded`` and ``network_g``)."""

    def __init__(self, state_dict: Dict[str, Any], path: str, checkpoint: Optional[Checkpoint]) -> None:
        super().__init__(state_dict)
        self.path = path
        self.checkpoint = checkpoint

#: Globals (module, name) added to spandrel's unpickling allow-list for the authors' checkpoints.
AUTHORS_PICKLE_GLOBALS: Tuple[Tuple[str, str], ...] = (
    ('collections', 'Counter'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('_codecs', 'encode'),
)


class ELANArch(Architecture[ELAN]):
    """spandrel ``Architecture`` for ELAN (id ``ELAN``)."""

    def __init__(self) -> None:
        lfe = 'body.0.modules_lfe.lfe_0.'
        super().__init__(id='ELAN', name='ELAN', detect=KeyCondition.has_all(
            'head.0.weight',
            KeyCondition.has_any(  # the LFE: shift-convolutions, their 1x1 convolutions alone, or 3x3 convolutions
                KeyCondition.has_all(lfe + 'conv0.shift_conv.conv1x1.weight', lfe + 'conv1.shift_conv.conv1x1.weight'),
                KeyCondition.has_all(lfe + 'conv0.weight', lfe + 'conv1.weight')),
            'body.0.modules_gmsa.gmsa_0.project_inp.0.weight',
            KeyCondition.has_any(  # ASA's BatchNorm or standard attention's LayerNorm
                'body.0.modules_gmsa.gmsa_0.project_inp.1.running_var', 'body.0.modules_gmsa.gmsa_0.norm.weight'),
            'body.0.modules_gmsa.gmsa_0.project_out.weight',
            'tail.0.weight',
        ))

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[ELAN]:
        """The ELAN these weights describe, as spandrel's descriptor.

        No size requirements: the network reflect-pads any input to its window multiple
        itself (as the reference does), which padding by spandrel would change. Tiling is
        supported (attention is local to windows of at most 16 pixels). Half and bfloat16:
        the inference path computes the attention logits in float32.
        """
        path, read = getattr(state_dict, 'path', 'state_dict'), getattr(state_dict, 'checkpoint', None)
        ck = Checkpoint(dict(state_dict), read.source if read else 'state_dict', read.recorded if read else {},
                        read.network_g if read else None)
        net, config = build_announced(ck, path, hint=SPANDREL_HINT)
        scale, colors = config['upscale'], config['colors']
        tags = [variant_name(config), f'{config["c_elan"]}nf', f'{config["m_elan"]}nb']
        if config.get('rgb_mean', ()) is None:
            tags.append('no-mean-shift')
        return ImageModelDescriptor(
            net, state_dict, architecture=self, purpose='SR' if scale > 1 else 'Restoration', tags=tags,
            supports_half=True, supports_bfloat16=True, scale=scale, input_channels=colors,
            output_channels=colors, size_requirements=SizeRequirements(), tiling=ModelTiling.SUPPORTED)


def with_file_record(load_state_dict_from_file: Callable[..., StateDict]) -> Callable[..., StateDict]:
    """Wrap ``ModelLoader.load_state_dict_from_file``: an ELAN's weights come back as a :class:`FileStateDict`
    (the file is read a second time by :func:`~elan_arch.deploy.checkpoint_formats.read_checkpoint` for its
    record; a file that reader refuses keeps no record). Other files are returned as spandrel read them."""
    if getattr(load_state_dict_from_file, 'elan_file_record', False):
        return load_state_dict_from_file

    @functools.wraps(load_state_dict_from_file)
    def wrapper(self: ModelLoader, path: Any) -> StateDict:
        state_dict = load_state_dict_from_file(self, path)
        if not all(key in state_dict for key in _ELAN_KEYS):
            return state_dict
        try:
            checkpoint: Optional[Checkpoint] = read_checkpoint(str(path))
        except ElanError:
            checkpoint = None
        return FileStateDict(state_dict, str(path), checkpoint)

    wrapper.elan_file_record = True  # type: ignore[attr-defined]
    return wrapper


def install(allow_authors_pickles: bool = True) -> None:
    """Register :class:`ELANArch` in ``spandrel.MAIN_REGISTRY`` (once), let ``ModelLoader`` pass an ELAN file's
    path and record to it (:func:`with_file_record`) and, unless told not to, let spandrel unpickle the authors'
    checkpoints (see the module docstring)."""
    MAIN_REGISTRY.add(ArchSupport.from_architecture(ELANArch()), ignore_duplicates=True)
    ModelLoader.load_state_dict_from_file = with_file_record(ModelLoader.load_state_dict_from_file)
    if allow_authors_pickles:
        allowed = getattr(importlib.import_module('spandrel.__helpers.unpickler'), 'safe_list', None)
        if isinstance(allowed, set):
            allowed.update(AUTHORS_PICKLE_GLOBALS)


install()
