"""Training: configs, the loop, validation, checkpoints and whole runs.

Modules (import them directly; this package re-exports nothing):

* ``config``: :class:`TrainConfig` and its sections, loaded from YAML presets with strict validation.
* ``optim``: AdamW parameter groups and the per-step learning-rate factor.
* ``loop``: one training epoch (:func:`train_one_epoch`, :class:`StepContext`, :class:`LossModule`).
* ``validation``: :func:`evaluate` (detection metrics in mm, task scores) and the best-metric choice.
* ``loaders``: the DataLoaders of a run (training epoch shard, validation shard).
* ``fit``: a whole run (:func:`fit`: run folder, resume, epoch loop, :class:`Checkpointer`).
* ``checkpoint``: checkpoint folders (safetensors, atomic swaps, verification) and :func:`load_detector`.
* ``train_log``: ``train_log.csv`` / ``val_log.csv``, TensorBoard and ``curves.png``.
* ``distributed``: torch.distributed helpers for torchrun DDP.
"""
