#!/usr/bin/env python
"""Run a trained detector on an image or a directory of images: drawn detections, per-image JSON, COCO results.

    python tools/infer.py --checkpoint output/det/model_final.pth --input photo.jpg
    python tools/infer.py --checkpoint CKPT --input images/ --output output/infer --score-thresh 0.5 --batch-size 4
    python tools/infer.py --checkpoint CKPT --input images/ --tta flip,multiscale,refine   # paper Appendix B
    python tools/infer.py --checkpoint CKPT --eval-dataset voc07-test --tta flip --scales 400 600 800  # score it
    python tools/infer.py --checkpoint CKPT --input photos/ --recursive          # sub-folders too
    python tools/infer.py --checkpoint CKPT --input 'shots/**/*.jpg' extra.png   # glob patterns and files

Writes into --output: one drawn image per input (same name; PNG unless the input was a JPEG), detections.json
({"class_names": [...], "images": {file name: {"height", "width", "detections": [{"box" XYXY original pixels,
"score", "label", "class_name", "category_id"}]}}, "skipped": {file name: why}}: files that cannot be decoded are
skipped and reported, the others still processed; "passed_over": files of a folder or pattern that are not images
this tool reads, e.g. .avif, also listed on stderr) and coco_results.json (COCO results format, bbox = [x, y, width,
height], integer ids). Ids are the user's own where the detector file records them (a model trained on a
COCO-format set: category_id = that set's id of the class; image_id = the integer id its training / test JSON gives
the file name); otherwise image_id = the file's position in the sorted input list (after the largest known id, when
some files have one) and category_id = label + 1. A dataset's non-integer image id (VOC's "000001") is kept as
"dataset_image_id" in detections.json. With --recursive or patterns, names in the output are paths relative to
the folder searched (the drawn images mirror its sub-folders).

With --eval-dataset NAME (instead of --input) the same predictions, TTA included, run over a test set and are
scored by its evaluator (VOC / COCO, as tools/eval_det.py does); the metrics go to stdout and metrics.json. The
score threshold is then the model's own (0.05 by default), as AP needs the low-scoring detections too.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resbackbone.errors import OutputError, report_input_error

if TYPE_CHECKING:
    from detection.tta import TTAOptions


logger = logging.getLogger("infer")


# The name in this tool's one-line errors ("infer: error: ...", argparse's form).
PROG = "infer"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model_final.pth or a training checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="image files, directories of images, or glob patterns "
                                                "('shots/**/*.jpg'; quote them)")
    src.add_argument("--eval-dataset", help="score the predictions on this test set (e.g. voc07-test, or "
                                            "coco:ANN.json:IMAGE_DIR, voc:FOLDER:SPLIT, yolo:DATA.yaml:val)")
    p.add_argument("--recursive", action="store_true", help="also the images in sub-folders of --input folders")
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
    from detection.tta import PAPER_SCALES, parse_tta
    from resbackbone.errors import InputError

    if args.batch_size < 1:
        return report_input_error(PROG, f"--batch-size must be >= 1, got {args.batch_size}")
    # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
    try:
        tta = parse_tta(args.tta, scales=args.scales or PAPER_SCALES)
        if args.eval_dataset:
            return evaluate(args, tta)
        files, passed_over = collect_inputs(args.input, recursive=args.recursive)
        if passed_over:
            kinds = Counter(p.suffix.lower() or "(no suffix)" for p in passed_over.values())
            print(f"infer: passed over {len(passed_over)} file(s) that are not images it reads "
                  f"({', '.join(f'{k}: {n}' for k, n in kinds.most_common())}): "
                  f"{', '.join(list(passed_over)[:10])}{', ...' if len(passed_over) > 10 else ''}", file=sys.stderr)
        return predict(args, tta, files, passed_over)
    except InputError as e:
        return report_input_error(PROG, e)


def collect_inputs(inputs: list[str], *, recursive: bool = False) -> tuple[dict[Path, str], dict[str, Path]]:
    """The images of ``--input`` as ``{file: its name in the output}`` (sorted), and the files of its folders /
    patterns that are not images this tool reads, ``{name: file}``.

    Each item is a file (taken whatever its suffix: the decoder reports it if it is no image), a folder (its images;
    with ``recursive`` those of its sub-folders too) or a glob pattern (``**`` spans folders). Output names are
    paths relative to the folder searched, so equal file names in two sub-folders stay apart.
    """
    from detection.predictor import IMAGE_SUFFIXES
    from resbackbone.errors import DataNotFoundError

    found: list[tuple[Path, Path, bool]] = []  # (file, the folder its name is relative to, named explicitly)
    for item in inputs:
        if any(c in item for c in "*?["):
            pattern = str(Path(item).expanduser())
            # Names are relative to the pattern's fixed leading folders ("shots/**/*.jpg" -> shots/).
            head = pattern[:min(pattern.find(c) for c in "*?[" if c in pattern)]
            base = Path(head) if head.endswith("/") else Path(head).parent
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataNotFoundError(f"--input {item}: no file matches the pattern")
            found += [(m, base, False) for m in matches]
            continue
        path = Path(item).expanduser()
        if path.is_file():
            found.append((path, path.parent, True))
        elif path.is_dir():
            found += [(m, path, False) for m in sorted(path.rglob("*") if recursive else path.iterdir())
                      if m.is_file()]
        else:
            raise DataNotFoundError(f"--input {path}: no such file or directory")
    files: dict[Path, str] = {}
    passed_over: dict[str, Path] = {}
    used: set[str] = set()
    for path, base, explicit in found:
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        if not explicit and path.suffix.lower() not in IMAGE_SUFFIXES:
            passed_over[name] = path
            continue
        if path in files:
            continue
        if name in used:  # the same name from two --input items
            name = path.resolve().as_posix().lstrip("/")
        used.add(name)
        files[path] = name
    if not files:
        raise DataNotFoundError(f"--input {' '.join(inputs)}: no image files ({', '.join(IMAGE_SUFFIXES)})"
                                + (f"; passed over {len(passed_over)} other file(s)" if passed_over else ""))
    return files, passed_over


def integer_image_ids(names: dict[Path, str], known: dict[str, Any]) -> dict[Path, int]:
    """Integer COCO ``image_id`` per file: the detector's recorded id of the file name when it is an integer,
    otherwise the file's position in the list, counted after the largest recorded integer (no clash)."""
    ids = {p: known.get(p.name) for p in names}
    ints = [v for v in ids.values() if isinstance(v, int) and not isinstance(v, bool)]
    start = max(ints) + 1 if ints else 0
    return {p: v if isinstance(v, int) and not isinstance(v, bool) else start + i
            for i, (p, v) in enumerate(ids.items())}


def predict(args: argparse.Namespace, tta: TTAOptions, names: dict[Path, str],
            passed_over: dict[str, Path] | None = None) -> int:
    """Drawn detections and JSON files for the files of ``names`` (file -> name in the output)."""
    import cv2
    from tqdm import tqdm

    from detection.predictor import Predictor, choose_device, detections_to_json
    from detection.visualize import draw_detections

    predictor = Predictor.from_checkpoint(args.checkpoint, device=choose_device(cpu=args.cpu),
                                          score_thresh=args.score_thresh, tta=tta,
                                          fuse_bn=args.fuse_bn, min_size=args.min_size, max_size=args.max_size)
    class_names = predictor.class_names
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list(names)
    logger.info("%d image(s) on %s, %d classes, test size %d/%d, tta=%s -> %s", len(files), predictor.device,
                len(class_names), predictor.min_size, predictor.max_size, args.tta or "off", out_dir)
    per_image: dict[str, dict] = {}
    coco: list[dict] = []
    # The user's own ids where the detector file knows them (the data it was trained and tested on): COCO
    # results then score against the user's JSON as they are. Otherwise position / label + 1.
    meta = predictor.model.dataset_meta
    category_ids = list(meta.get("category_ids") or range(1, len(class_names) + 1))
    known_ids = meta.get("image_ids") or {}
    index = integer_image_ids(names, known_ids)
    if known_ids:
        logger.info("%d of %d file name(s) have an image id of the training / test data",
                    sum(p.name in known_ids for p in files), len(files))
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(predictor.predict_files(files, args.batch_size, skipped=skipped), total=len(files), desc="infer",
               disable=len(files) < 2, dynamic_ncols=True)
    for path, image, det in bar:
        key = names[path]
        entry: dict[str, Any] = {"image_id": index[path], "height": int(image.shape[0]),
                                 "width": int(image.shape[1]), "detections": detections_to_json(det, class_names)}
        if known_ids.get(path.name, index[path]) != index[path]:
            entry["dataset_image_id"] = known_ids[path.name]
        per_image[key] = entry
        for d in entry["detections"]:
            x1, y1, x2, y2 = d["box"]
            d["category_id"] = category_ids[d["label"]]
            coco.append({"image_id": index[path], "category_id": d["category_id"],
                         "bbox": [x1, y1, round(x2 - x1, 4), round(y2 - y1, 4)], "score": d["score"]})
        if not args.no_draw:
            drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], class_names,
                                    score_thresh=args.score_thresh)
            suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
            target = (out_dir / key).with_suffix(suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
                raise OutputError(f"could not write {target}")
    report = {"class_names": class_names, "images": per_image,
              "skipped": {names.get(p, p.name): reason for p, reason in skipped},
              "passed_over": sorted(passed_over or {})}
    (out_dir / "detections.json").write_text(json.dumps(report, indent=1))
    (out_dir / "coco_results.json").write_text(json.dumps(coco))
    total = sum(len(v["detections"]) for v in per_image.values())
    logger.info("%d detection(s) >= %.2f in %d image(s); wrote %s", total, args.score_thresh, len(per_image),
                out_dir)
    for _, reason in skipped:  # the reason names the file
        print(f"infer: skipped: {reason}", file=sys.stderr)
    if skipped and not per_image:
        return report_input_error(PROG, f"none of the {len(files)} file(s) could be decoded")
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
