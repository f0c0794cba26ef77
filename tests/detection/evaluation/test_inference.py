"""detection.evaluation.inference: the inference loop on a generated VOC2007 test tree, in one process and sharded
over two (states gathered, scored on the main process only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from detection.data import VOC_CLASSES, build_dataset, build_test_loader
from detection.data.transforms import DetectionTransform
from detection.evaluation import build_evaluator, evaluate_detections, run_inference
from tests.helpers import near_hit_detections


class _FixedDetector(nn.Module):
    """Returns the given detections per image (keyed by original size, unique in VOC_IMAGES), like a detector."""

    def __init__(self, by_size: dict[tuple[int, int], dict[str, np.ndarray]]) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the loop a device to read
        self.by_size = by_size
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: Any = None, *,
                orig_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        assert not self.training and torch.is_inference_mode_enabled()
        self.calls += 1
        return [{"boxes": torch.as_tensor(self.by_size[s]["boxes"], dtype=torch.float32),
                 "scores": torch.as_tensor(self.by_size[s]["scores"], dtype=torch.float32),
                 "labels": torch.as_tensor(self.by_size[s]["labels"])} for s in orig_sizes]


def test_run_inference_single_and_sharded(voc07_test_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = build_dataset("voc07-test", voc07_test_root, train=False,
                            transform=DetectionTransform.resize_only(64, 128))
    dets = near_hit_detections(dataset)
    by_size = {(dataset.get_ground_truth(i)["height"], dataset.get_ground_truth(i)["width"]): d
               for i, d in enumerate(dets)}
    expected = evaluate_detections([dataset.get_ground_truth(i) for i in range(len(dataset))], dets,
                                   VOC_CLASSES, use_07_metric=True)
    model = _FixedDetector(by_size).train()
    metrics = run_inference(model, build_test_loader(dataset, batch_size=2, num_workers=0), build_evaluator(dataset),
                            progress=False)
    assert model.training  # restored
    assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert metrics["num_images"] == 4 and metrics["ms_per_image"] > 0

    # Two processes, each with its shard (3 of 4 images would pad): gather the states, score on the main one only.
    class _Acc:
        num_processes = 2

        def __init__(self, rank: int) -> None:
            self.process_index = rank
            self.is_main_process = rank == 0

    states: list[Any] = []

    def fake_gather(obj: list[Any]) -> list[Any]:
        states.extend(obj)
        return list(states)

    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "gather_object", fake_gather)
    results = []
    for rank in (1, 0):  # the main process gathers last, so it sees both states
        loader = build_test_loader(dataset, batch_size=1, num_workers=0, num_replicas=2, rank=rank)
        results.append(run_inference(model, loader, build_evaluator(dataset), accelerator=_Acc(rank), progress=False))
    assert results[0] == {}
    assert results[1]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9) and results[1]["num_images"] == 4
