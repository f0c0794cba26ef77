"""The inference loop shared by training-time evaluation and tools/eval_det.py (single or multi-process).

Shape shorthand: N images per batch, D detections per image, K classes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def _to_cpu(output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Scores / boxes may come out in bf16 under autocast: score them in float32.
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in output.items()}


def run_inference(
    model: nn.Module,
    loader: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    evaluator: Any,
    *,
    accelerator: Any = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and score the detections with ``evaluator``.

    Args:
        model: a detector; in eval mode ``model(images, orig_sizes=...)`` -> per image ``{"boxes" (D, 4) XYXY
            original pixels, "scores" (D,), "labels" (D,) in [0, K)}``.
        loader: yields ``(images: list of N (3, H, W) uint8, targets: list of N dicts with "index", "image_id",
            "orig_size")`` (``detection.data.build_test_loader``).
        evaluator: a VOCEvaluator / COCOEvaluator (``reset``, ``add(target, detections)``, ``state``, ``merge``,
            ``evaluate``); it is reset first.
        accelerator: an ``accelerate.Accelerator`` when several processes each run their shard; their per-image
            results are gathered (an image seen twice, from padded shards, counts once) and only the main process
            scores; the others return ``{}``.
        progress: a tqdm bar (main process only).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under autocast.
    Returns:
        the evaluator's metrics plus "num_images" (distinct images scored), "seconds" (model loop wall time of
        this process) and "ms_per_image".
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    evaluator.reset()
    is_main = accelerator is None or accelerator.is_main_process
    iterator: Iterable[Any] = loader
    if progress and is_main:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", dynamic_ncols=True, leave=False)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    seen = 0
    start = time.perf_counter()
    try:
        with torch.inference_mode(), amp:
            for images, targets in iterator:
                outputs = model([im.to(device, non_blocking=True) for im in images],
                                orig_sizes=[tuple(int(s) for s in t["orig_size"]) for t in targets])
                if len(outputs) != len(targets):
                    raise RuntimeError(f"the model returned {len(outputs)} results for {len(targets)} images")
                for t, o in zip(targets, outputs):
                    evaluator.add(t, _to_cpu(o))
                seen += len(images)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        states = gather_object([evaluator.state()])
        if not is_main:
            return {}
        evaluator.reset()
        evaluator.merge(states)
    num_images = len(evaluator.state())
    metrics = evaluator.evaluate()
    metrics["num_images"] = num_images
    metrics["seconds"] = seconds
    metrics["ms_per_image"] = 1000.0 * seconds / max(seen, 1)
    return metrics
