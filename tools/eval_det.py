#!/usr/bin/env python
"""Evaluate a trained detector, or score saved detections, with the VOC devkit or COCO metric.

    python tools/eval_det.py --checkpoint output/x/model_final.pth                 # its own test set
    python tools/eval_det.py --checkpoint model.pth --dataset voc07-test --write-devkit out/devkit
    accelerate launch --num_processes 8 tools/eval_det.py --checkpoint model.pth --dataset coco2017-val
    python tools/eval_det.py --dataset voc07-test --results out/devkit              # comp4_det_test_<class>.txt
    python tools/eval_det.py --gt-json instances_val2014.json --results detections.json   # COCO results file
    python tools/eval_det.py --checkpoint model.pth --report out/report --score-thresh 0.5   # + P/R, confusion
    python tools/eval_det.py --checkpoint model.pth --dataset coco:ann.json:images --tile 512 --tile-overlap 0.25

The metric defaults to the dataset's (VOC2007 test: 11-point "voc07"; other VOC / synthetic: "voc"; COCO: "coco").

--tile SIZE scores tiled inference (detection.tiling, as tools/infer.py --tile): each original image in SIZE x SIZE
tiles overlapping by --tile-overlap (a fraction, default 0.25), each tile at the test size, merged by class-wise
NMS; --batch-size then counts tiles. The metrics (--output) record the tiling and the tiles per image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from detection.evaluation import (
    METRICS,
    COCOEvaluator,
    VOCEvaluator,
    build_evaluator,
    evaluate_coco_results,
    evaluate_detector,
    format_metrics,
    load_results_json,
    read_devkit_results,
)
from detection.tiling import TileOptions, tile_options
from resbackbone.errors import ConfigError, DataError, InputError, report_input_error

logger = logging.getLogger("eval_det")


# The name in this tool's one-line errors ("eval_det: error: ...", argparse's form).
PROG = "eval_det"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="detector file (final weights or a training checkpoint) to run")
    src.add_argument("--results", help="saved detections: a directory of devkit comp4_det_test_<class>.txt files "
                                       "or a COCO results .json")
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--dataset", help="evaluation set: a name (voc07-test, coco2017-val) or your own "
                                      "(coco:ANN.json:IMAGE_DIR, voc:FOLDER:SPLIT, yolo:DATA.yaml:val); default with "
                                      "--checkpoint: the one it was trained for")
    gt.add_argument("--gt-json", help="COCO annotation file to score a COCO results .json against (no dataset)")
    p.add_argument("--data-root", help="data root (default: $RESDET_DATA_ROOT or datasets/)")
    p.add_argument("--classes", help="class list of a VOC-style folder scored without --checkpoint (a file or "
                                     "a,b,c; with --checkpoint the model's classes)")
    p.add_argument("--metric", choices=METRICS, help="default: the dataset's")
    p.add_argument("--output", help="write the metrics as JSON here")
    p.add_argument("--pr-curves", help="plot per-class precision/recall curves to this PNG (VOC metrics)")
    p.add_argument("--write-devkit", help="write devkit comp4_det_test_<class>.txt files here (VOC metrics)")
    p.add_argument("--write-coco-json", help="write a COCO results .json here (coco metric)")
    p.add_argument("--report", metavar="DIR",
                   help="also write an evaluation report here (any metric): report.json, report.txt (per-class "
                        "precision / recall / AP at --score-thresh and the confusion matrix, also printed), "
                        "confusion_matrix.png, pr_curves.png")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="--report: detections scoring at least this are counted (default 0.5)")
    p.add_argument("--report-iou", type=float, default=0.5,
                   help="--report: IoU a detection must exceed to match a box (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=2, help="data loading processes")
    p.add_argument("--min-size", type=int, default=None,
                   help="with --checkpoint: test shorter side in pixels (default: the model's own)")
    p.add_argument("--max-size", type=int, default=None,
                   help="with --checkpoint: cap on the longer side (default: the model's own)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fp32", action="store_true",
                   help="float32 only: no bf16 autocast (used by default on CPUs with bf16 instructions)")
    p.add_argument("--exact", action="store_true",
                   help="the model exactly as trained: no BN folding, no channels_last, float32 (reference runs)")
    p.add_argument("--tile", type=int, metavar="SIZE", default=None,
                   help="with --checkpoint: tiled inference, SIZE x SIZE tiles (original pixels, >= 32), each run "
                        "as an image at the test size")
    p.add_argument("--tile-overlap", type=float, metavar="FRACTION", default=None,
                   help="fraction of the tile shared by neighbouring tiles, in [0, 1) (default 0.25)")
    p.add_argument("--tile-whole", action="store_true",
                   help="with --tile: also run the whole image and merge its detections (large objects)")
    args = p.parse_args(argv)
    if args.tile is not None and not args.checkpoint:
        p.error("--tile runs a detector: it needs --checkpoint")
    if args.gt_json and (args.checkpoint or not str(args.results).endswith(".json")):
        p.error("--gt-json scores a COCO results .json given with --results")
    if args.results and not args.dataset and not args.gt_json:
        p.error("--results needs --dataset (or --gt-json for a COCO results .json)")
    if not 0.0 < args.report_iou < 1.0:
        p.error(f"--report-iou must be in (0, 1), got {args.report_iou}")
    if not math.isfinite(args.score_thresh):
        p.error(f"--score-thresh must be a finite number, got {args.score_thresh}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def _check_outputs(args: argparse.Namespace, evaluator: Any) -> None:
    """Fail before any long run when an asked-for output does not fit the metric."""
    if isinstance(evaluator, COCOEvaluator) and (args.write_devkit or args.pr_curves):
        raise ConfigError("--write-devkit / --pr-curves need a VOC metric (--metric voc07 or voc)")
    if isinstance(evaluator, VOCEvaluator) and args.write_coco_json:
        raise ConfigError("--write-coco-json needs --metric coco")


def _build_dataset(spec: Any, args: argparse.Namespace, classes: Any = None, transform: Any = None) -> Any:
    from detection.data import build_dataset
    from detection.data.catalog import read_class_list

    if classes is None and getattr(args, "classes", None):
        classes = read_class_list(args.classes)
    return build_dataset(spec, args.data_root, train=False, classes=classes, transform=transform)


def _score_results(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    path = Path(args.results)
    if args.gt_json:
        return evaluate_coco_results(args.gt_json, path), None
    dataset = _build_dataset(args.dataset, args)
    evaluator = build_evaluator(dataset, args.metric)
    _check_outputs(args, evaluator)
    if path.is_dir():
        ids = dataset.image_ids
        for i, det in enumerate(read_devkit_results(path, dataset.class_names, ids)):
            evaluator.add({"index": i, "image_id": ids[i]}, det)
    elif path.suffix == ".json":
        if not isinstance(evaluator, COCOEvaluator):
            raise ConfigError(f"{path}: a COCO results file is scored with --metric coco")
        for r in load_results_json(path):
            evaluator.results.setdefault(int(r["image_id"]), []).append(r)
    else:
        raise DataError(f"--results {path}: neither a directory of devkit files nor a .json file")
    return evaluator.evaluate(), evaluator


def _run_checkpoint(args: argparse.Namespace, tiles: TileOptions | None = None) -> tuple[dict[str, Any], Any]:
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        return _run_onnx(args, tiles)
    import torch
    from accelerate import Accelerator

    from detection.checkpoint import load_detector
    from detection.data import DetectionTransform
    from detection.predictor import cpu_has_bf16, optimize_for_inference, test_size

    accelerator = Accelerator(cpu=args.cpu)
    model, cfg, _ = load_detector(args.checkpoint, accelerator.device)
    # The Predictor's fast defaults (docs/inference-and-export.md): BN folded and channels_last, equal up to float
    # rounding; bf16 autocast only on a CPU with bf16 instructions, off with --fp32; --exact: the model as trained.
    kind = accelerator.device.type
    model = optimize_for_inference(model, fuse_bn=not args.exact,
                                   channels_last=not args.exact and kind in ("cpu", "cuda"))
    bf16 = kind == "cpu" and cpu_has_bf16() and not (args.fp32 or args.exact)
    name = args.dataset or cfg.data.test
    if not name:
        raise ConfigError(f"{args.checkpoint}: records no test dataset; pass --dataset")
    min_size, max_size = test_size(cfg.data.min_size_test, cfg.data.max_size_test, args.min_size, args.max_size)
    logger.info("%s on %s at test size %d/%d", args.checkpoint, name, min_size, max_size)
    dataset = _build_dataset(name, args, classes=model.class_names,
                             transform=DetectionTransform.resize_only(min_size, max_size))
    evaluator = build_evaluator(dataset, args.metric)
    _check_outputs(args, evaluator)
    if tiles is not None:
        metrics = _score_tiled(args, tiles, model, dataset, evaluator, accelerator, min_size, max_size, bf16)
    else:
        metrics = evaluate_detector(model, dataset, evaluator=evaluator, batch_size=args.batch_size,
                                    num_workers=args.num_workers, accelerator=accelerator,
                                    progress=not args.no_progress, autocast_dtype=torch.bfloat16 if bf16 else None)
    return metrics, evaluator if accelerator.is_main_process else None


def _run_onnx(args: argparse.Namespace, tiles: TileOptions | None) -> tuple[dict[str, Any], Any]:
    """--checkpoint model.onnx (tools/export_onnx.py): predictions from onnxruntime (detection.onnx_predictor, its
    test size and classes from the file's metadata), scored as a checkpoint's are; one process."""
    from detection.data import DetectionTransform
    from detection.evaluation import check_classes, score_predictions
    from detection.onnx_predictor import OnnxPredictor

    if tiles is not None:
        raise ConfigError("--tile: not for an .onnx detector; run the .pth checkpoint it was exported from")
    predictor = OnnxPredictor(args.checkpoint, min_size=args.min_size, max_size=args.max_size)
    name = args.dataset or predictor.metadata.test_dataset
    if not name:
        raise ConfigError(f"{args.checkpoint}: records no test dataset; pass --dataset")
    logger.info("%s (onnxruntime) on %s at test size %d/%d", args.checkpoint, name, predictor.min_size,
                predictor.max_size)
    dataset = _build_dataset(name, args, classes=predictor.class_names,
                             transform=DetectionTransform.resize_only(predictor.min_size, predictor.max_size))
    evaluator = build_evaluator(dataset, args.metric)
    _check_outputs(args, evaluator)
    check_classes(predictor.class_names, dataset, what=args.checkpoint)
    records = dataset.records
    results: Any = predictor.predict_files([r.file for r in records])
    if not args.no_progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(records), desc="eval (onnxruntime)", dynamic_ncols=True, leave=False)
    pairs = (({"index": i, "image_id": records[i].image_id, "orig_size": (int(im.shape[0]), int(im.shape[1]))}, det)
             for i, (_, im, det) in enumerate(results))
    return score_predictions(pairs, evaluator), evaluator


def _score_tiled(args: argparse.Namespace, tiles: TileOptions, model: Any, dataset: Any, evaluator: Any,
                 accelerator: Any, min_size: int, max_size: int, bf16: bool) -> dict[str, Any]:
    """--tile: the original images of ``dataset`` through a TiledPredictor (this process's share of them), scored
    by ``evaluator``; the metrics gain "tiling" (settings, tiles in all, tiles per image). ``model`` is already
    optimized as the flags say (the Predictor adds nothing); ``bf16``: autocast."""
    from detection.evaluation import check_classes, score_predictions
    from detection.predictor import Predictor
    from detection.tiling import TiledPredictor

    check_classes(model.class_names, dataset)
    predictor = Predictor(model, min_size=min_size, max_size=max_size, device=accelerator.device, fuse_bn=False,
                          channels_last=False, bf16=bf16)
    tiled = TiledPredictor(predictor, tiles, batch_size=args.batch_size)
    records = dataset.records
    mine = list(range(accelerator.process_index, len(records), accelerator.num_processes))
    logger.info("tiled: %d px tiles, overlap %g%s, each tile at test size %d/%d", tiles.size, tiles.overlap,
                " + the whole image" if tiles.whole else "", min_size, max_size)
    counts: list[int] = []

    def pairs() -> Iterator[tuple[dict[str, Any], dict]]:
        results = tiled.predict_files([records[i].file for i in mine])
        if not args.no_progress and accelerator.is_main_process:
            from tqdm import tqdm

            results = tqdm(results, total=len(mine), desc="eval (tiled)", dynamic_ncols=True, leave=False)
        for i, (_, image, det) in zip(mine, results):
            h, w = int(image.shape[0]), int(image.shape[1])
            counts.append(tiled.num_tiles(h, w))
            yield {"index": i, "image_id": records[i].image_id, "orig_size": (h, w)}, det

    metrics = score_predictions(pairs(), evaluator, accelerator=accelerator)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        counts = [n for part in gather_object([counts]) for n in part]
    if metrics:
        metrics["tiling"] = {**tiled.describe(), "tiles": sum(counts),
                             "tiles_per_image": sum(counts) / max(len(counts), 1)}
        logger.info("%d tiles for %d images (%.1f per image)", sum(counts), len(counts),
                    metrics["tiling"]["tiles_per_image"])
    return metrics


def _write_report(args: argparse.Namespace, evaluator: Any) -> None:
    """--report: the per-class P/R table, confusion matrix and PR curves of the detections just scored (a model
    run, devkit files or a COCO results file), written to args.report and the table printed."""
    from detection.evaluation import coco_files_evaluator, report_from_evaluator, write_report

    dataset = None
    if evaluator is None:  # --gt-json: a COCO results file scored without a dataset
        dataset, evaluator = coco_files_evaluator(args.gt_json, args.results)
    report = report_from_evaluator(evaluator, dataset=dataset, iou_thresh=args.report_iou,
                                   score_thresh=args.score_thresh)
    write_report(report, args.report)
    print(report.format_table())
    logger.info("wrote report.json, report.txt, confusion_matrix.png, pr_curves.png to %s", args.report)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        tiles = tile_options(args.tile, args.tile_overlap, args.tile_whole)
        metrics, evaluator = _score_results(args) if args.results else _run_checkpoint(args, tiles)
        if not metrics:  # a non-main process of a distributed run
            return 0
        if args.write_devkit:
            paths = evaluator.write_devkit_results(args.write_devkit)
            logger.info("wrote %d devkit files to %s", len(paths), args.write_devkit)
        if args.write_coco_json and evaluator is not None:
            logger.info("wrote %s", evaluator.write_results(args.write_coco_json))
        if args.pr_curves:
            from detection.visualize import save_pr_curves

            logger.info("wrote %s", save_pr_curves(evaluator.pr_curves(), args.pr_curves))
        if args.report:
            _write_report(args, evaluator)
    except InputError as e:
        # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
        return report_input_error(PROG, e)
    print(format_metrics(metrics))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe({k: v for k, v in metrics.items() if k not in ("log", "curves")}),
                                  indent=2) + "\n")
        logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
