"""Shared training infrastructure of the classification and detection trainers, one of each.

Not imported by ``import resbackbone`` (which needs torch and torchvision only): import it as
``resbackbone.engine`` or its modules. Needs pyyaml (configs), accelerate (the trainer), tqdm and tensorboard
(progress), all imported where they are used.

- :mod:`.config`      typed dataclass configs: strict YAML loading, ``key=value`` overrides, saving
- :mod:`.checkpoint`  numbered atomic checkpoints, RNG capture / restore, seeding
- :mod:`.schedule`    the shared solver config, SGD, warm-up + multistep / cosine, linear scaling, --max-iter
- :mod:`.sampling`    seeded, sharded, resumable batch sampling (repeat factors too) and the loaders built on it
- :mod:`.progress`    progress bar, metrics.jsonl + TensorBoard, the non-finite-loss guard
- :mod:`.trainer`     TrainerBase: accelerator, checkpoint dict, resume, config file, experiment trackers
- :mod:`.ema`         an exponential moving average of the weights (torch's AveragedModel, ramped decay)
- :mod:`.early_stopping` the best evaluation of a run and patience-based stopping
- :mod:`.trackers`    TensorBoard / W&B / MLflow / ... through accelerate's trackers
- :mod:`.paths`       the data root rule
"""
