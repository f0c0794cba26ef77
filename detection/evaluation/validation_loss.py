"""Validation loss: the training loss terms of a detector on a test set, computed without changing any state.

The losses need the model's training branch (``model.train()``: targets in, loss terms out), which would update
BatchNorm running statistics and draw the RPN / RoI samples from the global RNG: both would make a run that
evaluates differ from one that does not, and a resumed run differ from the uninterrupted one. So the loss is
computed with every BatchNorm (and dropout) layer in eval mode (statistics used, not updated), without gradients,
and with the global RNGs forked and re-seeded (``torch.random.fork_rng``): the samples come from a fixed seed,
and the training stream continues afterwards exactly where it was. The same seed at every evaluation of a run
means the same anchors are sampled each time (common random numbers), so the curve moves with the model, not
with the sampling.

Shape shorthand: N images per batch, G boxes per image.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

# Layers whose training mode changes state or draws random numbers: in eval mode while the loss is computed.
_STATEFUL_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


@contextmanager
def loss_mode(model: nn.Module, seed: int) -> Iterator[None]:
    """``model`` in training mode (its loss branch) with BatchNorm and dropout in eval mode, no gradients, and the
    CPU RNG (and the model's CUDA device's) forked and seeded with ``seed``; every mode flag and RNG state is put
    back on exit."""
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda, device_type="cuda"), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
            model.train()
            for m in model.modules():
                if isinstance(m, _STATEFUL_LAYERS):
                    m.eval()
            yield
    finally:
        for m, training in modes.items():
            m.training = training


def training_targets(target: dict[str, Any], *, use_difficult: bool, device: torch.device) -> dict[str, Tensor]:
    """A test-set target as training gives it: boxes marked difficult dropped (a training set leaves them out
    unless ``data.use_difficult``; a test set keeps them for the VOC evaluator), on ``device``."""
    boxes, labels = target["boxes"], target["labels"]  # (G, 4), (G,)
    difficult = target.get("difficult")
    if not use_difficult and difficult is not None and len(difficult) == len(labels):
        keep = ~torch.as_tensor(difficult, dtype=torch.bool)
        boxes, labels = boxes[keep], labels[keep]
    return {"boxes": boxes.to(device), "labels": labels.to(device)}


def validation_loss(
    model: nn.Module,
    dataset: Any,
    *,
    seed: int,
    batch_size: int = 1,
    num_workers: int = 0,
    use_difficult: bool = False,
    accelerator: Any = None,
) -> dict[str, float]:
    """The mean over the images of ``dataset`` of every training loss term of ``model``, and their sum.

    Args:
        model: a detector whose training-mode forward returns ``{"loss_<term>": scalar}``, each a per-image mean
            (:class:`detection.faster_rcnn.FasterRCNN`); unwrapped (no DDP), any mode: it is left as it was.
        dataset: a test :class:`~detection.data.DetectionDataset` (evaluation transform: the test size, no flip).
        seed: seeds the RPN / RoI sampling (see the module docstring); each process adds its rank.
        batch_size, num_workers: of the loader (each batch's terms are weighted by its number of images).
        use_difficult: keep boxes marked difficult as targets (``data.use_difficult``), else drop them as training
            does.
        accelerator: shards the set over its processes and sums their totals (every process gets the result).
    Returns:
        ``{"val_loss": sum of the terms, "val_loss_<term>": mean of each term}`` (floats).
    """
    from ..data import build_test_loader

    device = next(model.parameters()).device
    num_replicas = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    totals: dict[str, Tensor] = {}
    count = torch.zeros((), dtype=torch.float64, device=device)
    # A loader of the global RNG would draw its workers' base seed from the stream the samplers use.
    loader = build_test_loader(dataset, batch_size=batch_size, num_workers=num_workers, num_replicas=num_replicas,
                               rank=rank, generator=torch.Generator().manual_seed(seed))
    with loss_mode(model, seed + rank):
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [training_targets(t, use_difficult=use_difficult, device=device) for t in targets]
            out = model(images, targets)
            for k, v in out.items():
                if k.startswith("loss_"):
                    # Summed on the device in float64: one host read at the end, not one per batch and term.
                    totals[k] = totals.get(k, 0.0) + v.detach().double() * len(images)
            count += len(images)
    names = list(totals)  # the model's order (every process runs the same model: the same keys, in order)
    stacked = torch.stack([totals[k] for k in names] + [count]) if names else count[None]
    if num_replicas > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    values = stacked.tolist()
    n = max(values[-1], 1.0)
    terms = {f"val_{k}": v / n for k, v in zip(names, values[:-1])}
    return {"val_loss": sum(terms.values()), **terms}


__all__ = ["loss_mode", "training_targets", "validation_loss"]
