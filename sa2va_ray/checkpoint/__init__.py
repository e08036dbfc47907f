"""Training checkpoints, one home: their layout, reading them back, and the checks applied before anything reads them.

Modules::

    layout     the file names of a checkpoint (named once) and the one rule for what a model path is (stdlib only)
    integrity  headers and sizes of model directories and checkpoints; check_model_path, every job's pre-flight
    safety     may this pickle be loaded? (before DeepSpeed or torch unpickles any *.pt)
    trained    the trained tensors: trainable.safetensors and/or the ZeRO 0-3 shards, cross-checked
    load       the model a config or path names: preset, real weights, model directory or checkpoint

Writing a checkpoint is the training loop's (:mod:`sa2va_ray.train.checkpoint`); the model's own Hugging Face
``save_pretrained``/``from_pretrained`` is :mod:`sa2va_ray.model.checkpoint` (the model never imports Ray or
DeepSpeed, so it stays with the model).
"""
