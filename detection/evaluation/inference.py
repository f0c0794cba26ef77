"""The inference loop shared by training-time evaluation and tools/eval_det.py (single or multi-process)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


def run_inference(
    model: nn.Module,
    loader: Any,
    evaluator: Any,
    *,
    accelerator: Any = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and score with ``evaluator``; returns its metrics (+ timing).

    In a distributed run every process handles its shard; the per-image results are gathered with accelerate
    and only the main process scores (the others return ``{}``).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    evaluator.reset()
    start = time.perf_counter()
    count = 0
    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", dynamic_ncols=True, leave=False)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else _Null()
    with torch.inference_mode(), amp:
        for images, targets in iterator:
            outputs = model([im.to(device) for im in images], orig_sizes=[t["orig_size"] for t in targets])
            for t, o in zip(targets, outputs):
                evaluator.add(t, {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()})
            count += len(images)
    seconds = time.perf_counter() - start
    model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        states = gather_object([evaluator.state()])
        total = gather_object([count])
        if not accelerator.is_main_process:
            return {}
        evaluator.reset()
        evaluator.merge(states)
        count = sum(total)
    metrics = evaluator.evaluate()
    metrics["num_images"] = count
    metrics["seconds"] = seconds
    metrics["ms_per_image"] = 1000.0 * seconds / max(count, 1)
    return metrics


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
