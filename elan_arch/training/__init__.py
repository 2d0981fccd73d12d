"""What the ``basicsr`` command adds to BasicSR's own training and test pipeline.

An option file goes: start-up checks (:mod:`~elan_arch.training.startup`: option values, data,
pretrained weights, before any folder exists) -> the resume state (:mod:`~elan_arch.training.resume`:
the newest intact checkpoint, damaged ones moved aside) -> basicsr 1.4.2's ``train_pipeline``, with the
fixes of :mod:`~elan_arch.training.basicsr_fixes` applied in memory (atomic checkpoints, resumable
seeded sampling, CPU/gloo fallbacks, torchrun and Slurm start-up) -> checkpoints in ``experiments/``.

* :mod:`~elan_arch.training.interrupt`: SIGINT/SIGTERM stop the run with a resumable state saved;
* :mod:`~elan_arch.training.elastic`: distributed start-up that survives torchrun's elastic restarts;
* :mod:`~elan_arch.training.notes`: one-line warnings, on the console and in the run's log.

Nothing here runs on ``import elan_arch``: only the ``basicsr`` command (and ``elan train``/``test``)
loads it.
"""
