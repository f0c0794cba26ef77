"""COCO box AP through pycocotools ``COCOeval`` (the reference implementation, not a re-implementation).

Results are written in the official results format: ``{"image_id", "category_id" (original COCO id), "bbox"
[x, y, w, h], "score"}``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _np(x: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def coco_results(image_id: int, detections: dict[str, Any], contiguous_to_category_id: dict[int, int]) -> list[dict]:
    """One image's detections (our XYXY, labels [0, K)) -> COCO results entries."""
    boxes = _np(detections["boxes"], np.float64, (-1, 4))
    scores = _np(detections["scores"], np.float64, (-1,))
    labels = _np(detections["labels"], np.int64, (-1,))
    return [
        {"image_id": int(image_id), "category_id": int(contiguous_to_category_id[int(c)]),
         "bbox": [round(float(b[0]), 3), round(float(b[1]), 3), round(float(b[2] - b[0]), 3),
                  round(float(b[3] - b[1]), 3)],
         "score": round(float(s), 5)}
        for b, s, c in zip(boxes, scores, labels)
    ]


def evaluate_coco(coco_gt: Any, results: list[dict], *, class_names: dict[int, str] | None = None) -> dict[str, Any]:
    """COCOeval(bbox) of ``results`` against ``coco_gt``: the 12 standard numbers, "mAP" (= AP), per-class AP
    (IoU 0.50:0.95, area all, 100 detections) and pycocotools' printed summary under "log"."""
    if not results:
        zeros: dict[str, Any] = {n: 0.0 for n in COCO_STAT_NAMES}
        return {**zeros, "mAP": 0.0, "per_class": {}, "log": "no detections: every metric is 0"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        from pycocotools.cocoeval import COCOeval

        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {n: float(v) for n, v in zip(COCO_STAT_NAMES, ev.stats)}
    out["mAP"] = out["AP"]
    precision = ev.eval["precision"]  # (T, R, K, A, M)
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = (class_names or {}).get(cat_id) or coco_gt.loadCats(cat_id)[0]["name"]
        per_class[name] = float(p.mean()) if p.size else None
    out["per_class"] = per_class
    out["log"] = buf.getvalue()
    return out


def evaluate_coco_results(gt_json: str | Path, results_json: str | Path) -> dict[str, Any]:
    """Score a COCO results file against a ground-truth annotation file."""
    from detection.data.coco import load_coco

    coco_gt = load_coco(Path(gt_json))
    path = Path(results_json)
    if not path.is_file():
        raise FileNotFoundError(f"COCO results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(results, list):
        raise ValueError(f"{path}: a COCO results file is a JSON list of detections")
    return evaluate_coco(coco_gt, results)


class COCOEvaluator:
    """Collects detections per image and scores them with pycocotools."""

    def __init__(self, coco_gt: Any, contiguous_to_category_id: dict[int, int], image_ids: list[int] | None = None,
                 class_names: tuple[str, ...] | None = None) -> None:
        self.coco_gt = coco_gt
        self.contiguous_to_category_id = dict(contiguous_to_category_id)
        self.image_ids = image_ids
        self.class_names = class_names
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any) -> COCOEvaluator:
        ids = [int(r.image_id) for r in dataset.records]
        return cls(dataset.coco, dataset.contiguous_to_category_id, ids, tuple(dataset.class_names))

    def reset(self) -> None:
        self.results: dict[int, list[dict]] = {}

    def add(self, target: dict[str, Any], detections: dict[str, Any]) -> None:
        image_id = int(target["image_id"])
        self.results[image_id] = coco_results(image_id, detections, self.contiguous_to_category_id)

    def state(self) -> dict[int, list[dict]]:
        return self.results

    def merge(self, states: list[dict[int, list[dict]]]) -> None:
        for s in states:
            self.results.update(s)

    def to_results(self) -> list[dict]:
        return [r for _, rs in sorted(self.results.items()) for r in rs]

    def write_results(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_results()))

    def evaluate(self, **_: Any) -> dict[str, Any]:
        names = None
        if self.class_names is not None:
            names = {self.contiguous_to_category_id[i]: n for i, n in enumerate(self.class_names)}
        out = evaluate_coco(self.coco_gt, self.to_results(), class_names=names)
        if self.image_ids is not None:
            # Restrict to the evaluated images is implicit: COCOeval uses every GT image; report the count.
            out["num_images"] = len(self.image_ids)
        return out
