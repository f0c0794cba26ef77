"""The one inference loop and scoring path: training-time evaluation, ``train_det --eval-only``, ``eval_det``
and ``infer --eval-dataset`` (single or multi-process).

Shape shorthand: N images per batch, D detections per image, K classes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from resbackbone.errors import DataError, InputError


class ModelOutputError(InputError, ValueError):
    """The detector's outputs cannot be scored (non-finite scores or boxes): the model file is broken."""


def _to_cpu(output: dict[str, Any]) -> dict[str, torch.Tensor]:
    # Scores / boxes may come out in bf16 under autocast: score them in float32. numpy arrays (the onnxruntime
    # predictor's) become tensors.
    output = {k: torch.as_tensor(v) for k, v in output.items()}
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in output.items()}


def score_predictions(
    predictions: Iterable[tuple[dict[str, Any], dict[str, torch.Tensor]]],
    evaluator: Any,
    *,
    accelerator: Any = None,
) -> dict[str, Any]:
    """Feed ``(target, detections)`` pairs to ``evaluator`` and score them: the one scoring loop.

    Args:
        predictions: per image the loader's target dict ("index", "image_id", "orig_size") and the detections
            ``{"boxes" (D, 4) XYXY original pixels, "scores" (D,), "labels" (D,) in [0, K)}``.
        evaluator: a VOCEvaluator / COCOEvaluator (``reset``, ``add``, ``state``, ``merge``, ``evaluate``); it is
            reset first.
        accelerator: an ``accelerate.Accelerator`` when several processes each score their shard; their per-image
            results are gathered (an image seen twice, from padded shards, counts once) and only the main process
            scores; the others return ``{}``.
    Returns:
        the evaluator's metrics plus "num_images" (distinct images scored), "seconds" (wall time of the
        prediction loop in this process) and "ms_per_image".
    """
    evaluator.reset()
    seen = 0
    start = time.perf_counter()
    for target, detections in predictions:
        detections = _to_cpu(detections)
        bad = [k for k in ("boxes", "scores") if k in detections and not bool(torch.isfinite(detections[k]).all())]
        if bad:
            # A NaN score sorts anywhere and changes AP: a diverged model must not get a number.
            raise ModelOutputError(f"the detector produced non-finite {' and '.join(bad)} for image "
                                   f"{target.get('image_id')!r}: its weights are broken (diverged training?)")
        evaluator.add(target, detections)
        seen += 1
    seconds = time.perf_counter() - start
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        states = gather_object([evaluator.state()])
        if not accelerator.is_main_process:
            return {}
        evaluator.reset()
        evaluator.merge(states)
    num_images = len(evaluator.state())
    metrics = evaluator.evaluate()
    metrics["num_images"] = num_images
    metrics["seconds"] = seconds
    metrics["ms_per_image"] = 1000.0 * seconds / max(seen, 1)
    return metrics


def _model_predictions(
    model: nn.Module, loader: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]], autocast_dtype: Any
) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for images, targets in loader:
            outputs = model([im.to(device, non_blocking=True) for im in images],
                            orig_sizes=[tuple(int(s) for s in t["orig_size"]) for t in targets])
            if len(outputs) != len(targets):
                raise RuntimeError(f"the model returned {len(outputs)} results for {len(targets)} images")
            yield from zip(targets, outputs)


def run_inference(
    model: nn.Module,
    loader: Iterable[tuple[list[torch.Tensor], list[dict[str, Any]]]],
    evaluator: Any,
    *,
    accelerator: Any = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and score the detections with ``evaluator`` (:func:`score_predictions`).

    Args:
        model: a detector; in eval mode ``model(images, orig_sizes=...)`` -> per image ``{"boxes" (D, 4) XYXY
            original pixels, "scores" (D,), "labels" (D,) in [0, K)}``.
        loader: yields ``(images: list of N (3, H, W) uint8, targets: list of N dicts with "index", "image_id",
            "orig_size")`` (``detection.data.build_test_loader``).
        evaluator, accelerator: see :func:`score_predictions`.
        progress: a tqdm bar (main process only).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under autocast.
    """
    was_training = model.training
    model.eval()
    iterator: Iterable[Any] = loader
    if progress and (accelerator is None or accelerator.is_main_process):
        from tqdm import tqdm

        iterator = tqdm(loader, desc="eval", dynamic_ncols=True, leave=False)
    try:
        return score_predictions(_model_predictions(model, iterator, autocast_dtype), evaluator,
                                 accelerator=accelerator)
    finally:
        model.train(was_training)


def check_classes(model_classes: Sequence[str], dataset: Any, what: str = "the model") -> None:
    """A model is scored only on a dataset with its own classes, in its order (else every AP is meaningless)."""
    if list(model_classes) != list(dataset.class_names):
        raise DataError(
            f"{what} predicts classes {list(model_classes)[:6]}{'...' if len(model_classes) > 6 else ''} but "
            f"dataset {dataset.name!r} has {list(dataset.class_names)[:6]}"
            f"{'...' if len(dataset.class_names) > 6 else ''}: a detector is scored only on its own classes"
        )


def evaluate_detector(
    model: nn.Module,
    dataset: Any,
    *,
    metric: str | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    accelerator: Any = None,
    progress: bool = True,
    evaluator: Any = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Score a detector on a test dataset: the one scoring path of training, ``train_det --eval-only`` and
    ``eval_det`` (``autocast_dtype``: e.g. ``torch.bfloat16`` to run the model under autocast).

    Checks the classes first (:func:`check_classes`), builds the dataset's evaluator (``metric`` None: its
    default) unless one is given, shards the data over ``accelerator``'s processes and runs
    :func:`run_inference`. Returns its metrics (``{}`` on non-main processes).
    """
    from ..data import build_test_loader
    from . import build_evaluator

    check_classes(model.class_names, dataset)
    evaluator = evaluator if evaluator is not None else build_evaluator(dataset, metric)
    num_replicas = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    loader = build_test_loader(dataset, batch_size=batch_size, num_workers=num_workers, num_replicas=num_replicas,
                               rank=rank)
    return run_inference(model, loader, evaluator, accelerator=accelerator, progress=progress,
                         autocast_dtype=autocast_dtype)
