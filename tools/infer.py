#!/usr/bin/env python
"""Run a trained detector on an image or a directory of images: drawn detections, per-image JSON, COCO results.

    python tools/infer.py --checkpoint output/det/model_final.pth --input photo.jpg
    python tools/infer.py --checkpoint CKPT --input images/ --output output/infer --score-thresh 0.5 --batch-size 4
    python tools/infer.py --checkpoint CKPT --input images/ --tta flip,multiscale,refine   # paper Appendix B
    python tools/infer.py --checkpoint CKPT --eval-dataset voc07-test --tta flip --scales 400 600 800  # score it

Writes into --output: one drawn image per input (same name; PNG unless the input was a JPEG), detections.json
({"class_names": [...], "images": {file name: {"height", "width", "detections": [{"box" XYXY original pixels,
"score", "label", "class_name", "category_id"}]}}, "skipped": {file name: why}}: files that cannot be decoded are
skipped and reported, the others still processed) and coco_results.json (COCO results format, bbox = [x, y, width,
height]). Ids are the user's own where the detector file records them (a model trained on a COCO-format set:
category_id = that set's id of the class; image_id = the id its training / test JSON gives the file name);
otherwise image_id = the file's position in the sorted input list and category_id = label + 1.

With --eval-dataset NAME (instead of --input) the same predictions, TTA included, run over a test set and are
scored by its evaluator (VOC / COCO, as tools/eval_det.py does); the metrics go to stdout and metrics.json. The
score threshold is then the model's own (0.05 by default), as AP needs the low-scoring detections too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detection.tta import TTAOptions

REPO = Path(__file__).resolve().parents[1]
# Running from a source checkout without installing must find the packages too.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("infer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model_final.pth or a training checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="an image file or a directory of images")
    src.add_argument("--eval-dataset", help="score the predictions on this test set (e.g. voc07-test, or "
                                            "coco:ANN.json:IMAGE_DIR, voc:FOLDER:SPLIT, yolo:DATA.yaml:val)")
    p.add_argument("--data-root", default=None, help="data root for --eval-dataset (see datasets/README.md)")
    p.add_argument("--output", default="output/infer", help="directory for drawn images and JSON files")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="minimum score to draw and to write to the JSON files (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--tta", default="", help="comma-separated test-time improvements: flip,multiscale,refine,voting")
    p.add_argument("--scales", type=int, nargs="+", default=None,
                   help="shorter sides for --tta multiscale (default: the paper's 200 400 600 800 1000)")
    p.add_argument("--min-size", type=int, default=None,
                   help="test resize: shorter side in pixels (default: the model's own, e.g. 600 or 800)")
    p.add_argument("--max-size", type=int, default=None,
                   help="test resize: cap on the longer side (default: the model's own); an image whose sides "
                        "already fit is not resampled")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--fuse-bn", action="store_true",
                   help="fold BatchNorm into the convolutions (faster; equal up to float rounding)")
    p.add_argument("--no-draw", action="store_true", help="only write the JSON files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from detection.predictor import list_images
    from detection.tta import PAPER_SCALES, parse_tta
    from resbackbone.errors import InputError

    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
    try:
        tta = parse_tta(args.tta, scales=args.scales or PAPER_SCALES)
        if args.eval_dataset:
            return evaluate(args, tta)
        files = list_images(args.input)
        return predict(args, tta, files)
    except InputError as e:
        raise SystemExit(f"infer: error: {e}") from None


def predict(args: argparse.Namespace, tta: TTAOptions, files: list[Path]) -> int:
    """Drawn detections and JSON files for ``files``."""
    import cv2
    from tqdm import tqdm

    from detection.predictor import Predictor, choose_device, detections_to_json
    from detection.visualize import draw_detections

    predictor = Predictor.from_checkpoint(args.checkpoint, device=choose_device(cpu=args.cpu),
                                          score_thresh=args.score_thresh, tta=tta,
                                          fuse_bn=args.fuse_bn, min_size=args.min_size, max_size=args.max_size)
    names = predictor.class_names
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%d image(s) on %s, %d classes, test size %d/%d, tta=%s -> %s", len(files), predictor.device,
                len(names), predictor.min_size, predictor.max_size, args.tta or "off", out_dir)
    per_image: dict[str, dict] = {}
    coco: list[dict] = []
    # The user's own ids where the detector file knows them (the data it was trained and tested on): COCO
    # results then score against the user's JSON as they are. Otherwise position / label + 1.
    meta = getattr(predictor.model, "dataset_meta", None) or {}
    category_ids = list(meta.get("category_ids") or range(1, len(names) + 1))
    known_ids = meta.get("image_ids") or {}
    index = {p: known_ids.get(p.name, i) for i, p in enumerate(files)}
    if known_ids:
        logger.info("%d of %d file name(s) have an image id of the training / test data",
                    sum(p.name in known_ids for p in files), len(files))
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(predictor.predict_files(files, args.batch_size, skipped=skipped), total=len(files), desc="infer",
               disable=len(files) < 2, dynamic_ncols=True)
    for path, image, det in bar:
        per_image[path.name] = {"image_id": index[path], "height": int(image.shape[0]), "width": int(image.shape[1]),
                                "detections": detections_to_json(det, names)}
        for d in per_image[path.name]["detections"]:
            x1, y1, x2, y2 = d["box"]
            d["category_id"] = category_ids[d["label"]]
            coco.append({"image_id": index[path], "category_id": d["category_id"],
                         "bbox": [x1, y1, round(x2 - x1, 4), round(y2 - y1, 4)], "score": d["score"]})
        if not args.no_draw:
            drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], names,
                                    score_thresh=args.score_thresh)
            suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
            target = out_dir / (path.stem + suffix)
            if not cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
                raise SystemExit(f"could not write {target}")
    report = {"class_names": names, "images": per_image,
              "skipped": {str(p.name): reason for p, reason in skipped}}
    (out_dir / "detections.json").write_text(json.dumps(report, indent=1))
    (out_dir / "coco_results.json").write_text(json.dumps(coco))
    total = sum(len(v["detections"]) for v in per_image.values())
    logger.info("%d detection(s) >= %.2f in %d image(s); wrote %s", total, args.score_thresh, len(per_image),
                out_dir)
    for _, reason in skipped:  # the reason names the file
        print(f"infer: skipped: {reason}", file=sys.stderr)
    if skipped and not per_image:
        raise SystemExit(f"infer: error: none of the {len(files)} file(s) could be decoded")
    if skipped:
        logger.warning("%d of %d file(s) could not be decoded and were skipped (listed under 'skipped' in "
                       "detections.json)", len(skipped), len(files))
    return 0


def evaluate(args: argparse.Namespace, tta: TTAOptions) -> int:
    """Predict over a test set with the chosen TTA and score it with the dataset's evaluator."""
    from tqdm import tqdm

    from detection.data import build_dataset
    from detection.evaluation import build_evaluator, check_classes, format_metrics, score_predictions
    from detection.predictor import Predictor, choose_device

    predictor = Predictor.from_checkpoint(args.checkpoint, device=choose_device(cpu=args.cpu), tta=tta,
                                          min_size=args.min_size, max_size=args.max_size)
    ds = build_dataset(args.eval_dataset, args.data_root, train=False, min_size=predictor.min_size,
                       max_size=predictor.max_size, classes=predictor.class_names)
    check_classes(predictor.class_names, ds, what=args.checkpoint)
    records = ds.records
    # The predictor decodes the original files itself (TTA resizes them per scale); the evaluator gets the same
    # targets the test loader would give.
    results = predictor.predict_files([r.file for r in records], args.batch_size)
    pairs = (({"index": i, "image_id": records[i].image_id, "orig_size": (int(image.shape[0]), int(image.shape[1]))},
              det) for i, (_, image, det) in enumerate(tqdm(results, total=len(records), desc="eval",
                                                          dynamic_ncols=True)))
    metrics = score_predictions(pairs, build_evaluator(ds))
    metrics["tta"] = args.tta or "off"
    print(format_metrics(metrics))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
