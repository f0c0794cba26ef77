"""COCO box AP through pycocotools ``COCOeval`` (the reference implementation, not a re-implementation).

Results use the official results format: ``{"image_id", "category_id" (original COCO id), "bbox" [x, y, w, h]
in original-image pixels, "score"}``; our XYXY boxes are converted to XYWH only here. pycocotools prints its
progress and the summary table; that text is captured and returned under "log" instead of polluting stdout.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import DataError, DataNotFoundError

# The 12 numbers of COCOeval.summarize(), in its order (AP at IoU .50:.95 / .50 / .75, by area, then AR).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _np(x: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def coco_results(image_id: int, detections: Mapping[str, Any], contiguous_to_category_id: Mapping[int, int]) -> list[
        dict[str, Any]]:
    """One image's detections ``{"boxes" (D, 4) XYXY original pixels, "scores" (D,), "labels" (D,) in [0, K)}``
    -> COCO results entries (XYWH, original category ids)."""
    boxes = _np(detections["boxes"], np.float64, (-1, 4))
    scores = _np(detections["scores"], np.float64, (-1,))
    labels = _np(detections["labels"], np.int64, (-1,))
    out = []
    for b, s, c in zip(boxes, scores, labels):
        if int(c) not in contiguous_to_category_id:
            raise DataError(f"image {image_id}: label {int(c)} has no COCO category id "
                             f"(known labels 0..{len(contiguous_to_category_id) - 1})")
        out.append({"image_id": int(image_id), "category_id": int(contiguous_to_category_id[int(c)]),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)})
    return out


def evaluate_coco(
    coco_gt: Any,
    results: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
    category_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """COCOeval(bbox) of ``results`` against ``coco_gt`` (a pycocotools COCO).

    Args:
        results: official-format result entries.
        image_ids: evaluate only these images (default: every image of ``coco_gt``, as pycocotools does).
        category_names: category id -> name for "per_class" (default: the names in ``coco_gt``).
    Returns:
        the 12 :data:`COCO_STAT_NAMES` numbers as fractions, "mAP" (= AP), "per_class" {name: AP at IoU .50:.95,
        all areas, 100 detections; None for a category without ground truth}, "log" (pycocotools' output).
        No results at all gives zeros (pycocotools cannot load an empty result list).
    """
    cat_ids = sorted(coco_gt.getCatIds())
    names = dict(category_names) if category_names is not None else {
        c["id"]: c["name"] for c in coco_gt.loadCats(cat_ids)}
    if not results:
        zeros: dict[str, Any] = {n: 0.0 for n in COCO_STAT_NAMES}
        return {**zeros, "mAP": 0.0, "per_class": {names[c]: 0.0 for c in cat_ids if c in names},
                "log": "no detections: every metric is 0"}
    known_images = set(coco_gt.getImgIds())
    unknown = {int(r["image_id"]) for r in results} - known_images
    if unknown:
        raise DataError(f"results refer to {len(unknown)} image id(s) not in the ground truth, e.g. {min(unknown)}")
    unknown_cats = {int(r["category_id"]) for r in results} - set(cat_ids)
    if unknown_cats:
        raise DataError(f"results use category id(s) not in the ground truth: {sorted(unknown_cats)[:5]}")
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(results)))  # loadRes mutates the entries (adds area, id)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in image_ids})
        if category_names is not None:
            # Only the classes: a category that is not one (a Roboflow export's empty parent) is not scored.
            ev.params.catIds = sorted(c for c in cat_ids if c in names)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {n: float(v) for n, v in zip(COCO_STAT_NAMES, ev.stats)}
    out["mAP"] = out["AP"]
    precision = ev.eval["precision"]  # (T IoUs, R recall points, K categories, A areas, M max-dets); -1 = no GT
    per_class: dict[str, float | None] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[cat_id]] = float(p.mean()) if p.size else None
    out["per_class"] = per_class
    out["log"] = buf.getvalue()
    return out


def load_results_json(path: str | Path) -> list[dict[str, Any]]:
    """A COCO results file (a JSON list of ``{"image_id", "category_id", "bbox", "score"}``)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"COCO results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(results, list):
        raise DataError(f"{path}: a COCO results file is a JSON list of detections, got {type(results).__name__}")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise DataError(f"{path}: entry {i} lacks one of image_id, category_id, bbox, score: {str(r)[:100]}")
        problem = _result_problem(r)
        if problem:
            raise DataError(f"{path}: entry {i} {problem}: {str(r)[:120]}")
    return results


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _result_problem(r: Mapping[str, Any]) -> str | None:
    """Why a COCO result entry would change the metric or crash pycocotools (None: it is fine)."""
    for key in ("image_id", "category_id"):
        if not isinstance(r[key], int) or isinstance(r[key], bool):
            return f"has a non-integer {key} {r[key]!r}"
    if not _is_number(r["score"]):
        return f"has a score that is not a finite number ({r['score']!r})"
    box = r["bbox"]
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(_is_number(v) for v in box):
        return "has a bbox that is not 4 finite numbers [x, y, width, height]"
    return None


def evaluate_coco_results(gt_json_path: str | Path, results_json_path: str | Path) -> dict[str, Any]:
    """Score a COCO results file against a ground-truth annotation file (every GT image counts)."""
    from detection.data.coco import load_coco

    coco_gt = load_coco(Path(gt_json_path))
    results = load_results_json(results_json_path)
    try:
        return evaluate_coco(coco_gt, results)
    except ValueError as e:
        raise DataError(f"{results_json_path}: {e}") from e


class COCOEvaluator:
    """Collects detections per image and scores them with pycocotools.

    Args:
        coco_gt: pycocotools COCO of the evaluated split.
        contiguous_to_category_id: our label in [0, K) -> COCO category id.
        image_ids: restrict scoring to these COCO image ids (default: every GT image).
        class_names: K names, for "per_class" (default: the category names of ``coco_gt``).
    """

    def __init__(
        self,
        coco_gt: Any,
        contiguous_to_category_id: Mapping[int, int],
        *,
        image_ids: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.coco_gt = coco_gt
        self.contiguous_to_category_id = {int(k): int(v) for k, v in contiguous_to_category_id.items()}
        self.image_ids = [int(i) for i in image_ids] if image_ids is not None else None
        self.category_names = None
        if class_names is not None:
            if len(class_names) != len(self.contiguous_to_category_id):
                raise ValueError(f"{len(class_names)} class names for {len(self.contiguous_to_category_id)} labels")
            self.category_names = {self.contiguous_to_category_id[i]: n for i, n in enumerate(class_names)}
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any) -> COCOEvaluator:
        """The dataset's ``coco`` / ``contiguous_to_category_id``, scored on exactly the dataset's images."""
        ids = [int(i) for i in dataset.image_ids]
        return cls(dataset.coco, dataset.contiguous_to_category_id, image_ids=ids, class_names=dataset.class_names)

    def reset(self) -> None:
        self.results: dict[int, list[dict[str, Any]]] = {}

    def add(self, target: Mapping[str, Any], detections: Mapping[str, Any]) -> None:
        """Detections (original pixels, labels [0, K)) of the image ``target["image_id"]``."""
        image_id = int(target["image_id"])
        self.results[image_id] = coco_results(image_id, detections, self.contiguous_to_category_id)

    def state(self) -> dict[int, list[dict[str, Any]]]:
        """What a process collected (picklable), for gathering in a distributed run."""
        return self.results

    def merge(self, states: Sequence[dict[int, list[dict[str, Any]]]]) -> None:
        """Union of gathered states; an image seen twice (padded shards) keeps one copy."""
        for s in states:
            self.results.update(s)

    def to_results(self) -> list[dict[str, Any]]:
        """Official results format, sorted by image id."""
        return [r for _, rs in sorted(self.results.items()) for r in rs]

    def write_results(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_results()))
        return path

    def evaluate(self) -> dict[str, Any]:
        out = evaluate_coco(self.coco_gt, self.to_results(), image_ids=self.image_ids,
                            category_names=self.category_names)
        out["num_images_with_detections"] = len(self.results)
        return out
