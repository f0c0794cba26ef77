"""One model, one test set, any evaluation batch size: the same detections per image and the same mAP.

Real VOC2007 photos (``shared/data``; skipped when absent) have many aspect ratios, so a batch mixes padded sizes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detection import build_faster_rcnn
from detection.data import VOC_CLASSES, build_dataset
from detection.data.transforms import DetectionTransform
from detection.evaluation import build_evaluator
from detection.evaluation.inference import evaluate_detector
from tests.helpers import SHARED_DATA, assert_same_detections, randomize_bn_statistics, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.skipif(not (SHARED_DATA / "voc").is_dir(), reason="../shared/data not present")
def test_voc_map_does_not_depend_on_the_evaluation_batch_size() -> None:
    dataset = build_dataset("voc07-test", SHARED_DATA / "voc", train=False,
                            transform=DetectionTransform.resize_only(96, 160))
    sizes = {tuple(dataset[i][0].shape[1:]) for i in range(8)}
    assert len(sizes) > 2  # the first batch of 8 really mixes sizes
    torch.manual_seed(0)
    cfg = replace(tiny_config(), num_classes=len(VOC_CLASSES))
    # 2x2 pooling: res5 per RoI on 1x1 maps, cheap on CPU.
    cfg = replace(cfg, rpn=replace(cfg.rpn, post_nms_topk_test=50),
                  roi_heads=replace(cfg.roi_heads, pooler_resolution=2))
    model = build_faster_rcnn(cfg, class_names=VOC_CLASSES).eval()
    randomize_bn_statistics(model)
    # Every candidate above 0.05 kept (no cut at a count, where scores equal to rounding could swap places).
    model.roi_heads.score_thresh, model.roi_heads.detections_per_image = 0.05, 10_000
    results = {}
    for batch_size in (1, 4, 8):
        evaluator = build_evaluator(dataset, "voc07")
        metrics = evaluate_detector(model, dataset, batch_size=batch_size, progress=False, evaluator=evaluator)
        results[batch_size] = (metrics["mAP"], evaluator.all_detections())
    ref_map, ref_dets = results[1]
    assert ref_map > 0  # random boxes hit some large VOC objects: the number is not a vacuous 0
    for batch_size in (4, 8):
        got_map, dets = results[batch_size]
        assert abs(got_map - ref_map) <= 1e-4, f"batch {batch_size}: mAP {got_map} vs {ref_map} at batch 1"
        for i, (a, b) in enumerate(zip(dets, ref_dets)):
            # Original pixels (~4x the input's): float rounding of other conv batch sizes, scaled up.
            assert_same_detections(a, b, f"image {i} at batch {batch_size}")
