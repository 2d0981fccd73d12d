"""Trained ELANs outside BasicSR: checkpoint files, ONNX, spandrel.

* :mod:`~elan_arch.deploy.checkpoint_formats`: which container a file is (BasicSR, the authors',
  traiNNer-redux, safetensors, bare state_dicts) and the weights and settings it holds;
* :mod:`~elan_arch.deploy.checkpoint`: which network a checkpoint holds (its record, its run's option
  file via :mod:`~elan_arch.deploy.option_files`, or an announced assumption), loading and ``elan convert``;
* :mod:`~elan_arch.deploy.onnx_export`: ``elan export`` (any input size or a fixed one, float32/float16,
  checked against PyTorch with onnxruntime) of :mod:`~elan_arch.deploy.onnx_graph`'s graph, written for
  runtimes (window gathers, rank <= 4);
* :mod:`~elan_arch.deploy.onnx_runtime`: an exported model run by onnxruntime as a drop-in network
  (``elan upscale --onnx``);
* :mod:`~elan_arch.deploy.spandrel_arch`: ELAN in spandrel's registry (``import elan_arch.spandrel_support``).

A checkpoint flows: file -> :func:`~elan_arch.deploy.checkpoint_formats.read_checkpoint` -> configuration
(:func:`~elan_arch.deploy.checkpoint.network_config`) -> :class:`~elan_arch.archs.elan_arch.ELAN` ->
safetensors / ONNX / spandrel descriptor.
"""
