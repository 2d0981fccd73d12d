"""Measurements behind ``elan bench`` (the command line is :mod:`elan_arch.cli.bench_cmd`).

* :mod:`~elan_arch.bench.models`: the compared models (ELAN's paths, SwinIR-light, EDSR, onnxruntime);
* :mod:`~elan_arch.bench.inference`: parameters, FLOPs, latency and peak memory of one forward;
* :mod:`~elan_arch.bench.training`: training-step speed (forward, L1, backward, Adam) and the data
  loader's throughput;
* :mod:`~elan_arch.bench.flops`: FLOP counting, with the formulas PyTorch's counter lacks.

Models are timed round-robin (interleaved), so background load affects them alike; results are
markdown tables that name the machine, torch version and command. Measured figures are in
``docs/performance.md``.
"""
