#!/usr/bin/env python
"""Run a trained detector on an image or a directory of images: drawn detections, per-image JSON, COCO results.

    python tools/infer.py --checkpoint output/det/model_final.pth --input photo.jpg
    python tools/infer.py --checkpoint CKPT --input images/ --output output/infer --score-thresh 0.5 --batch-size 4
    python tools/infer.py --checkpoint CKPT --input images/ --tta flip,multiscale,refine   # paper Appendix B
    python tools/infer.py --checkpoint CKPT --eval-dataset voc07-test --tta flip --scales 400 600 800  # score it
    python tools/infer.py --checkpoint CKPT --input photos/ --recursive          # sub-folders too
    python tools/infer.py --checkpoint CKPT --input 'shots/**/*.jpg' extra.png   # glob patterns and files
    python tools/infer.py --checkpoint CKPT --input aerial.jpg --tile 512 --tile-overlap 0.25  # small objects
    python tools/infer.py --checkpoint CKPT --input clip.mp4 --batch-size 4 --every 2   # video (or --camera 0)

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

--tile SIZE cuts each image into SIZE x SIZE tiles overlapping by --tile-overlap (a fraction of SIZE, default
0.25), runs each tile as an image (the test resize applies to the tile, so small objects are enlarged), maps the
boxes back, drops boxes cut by a tile border that another tile sees whole and merges with class-wise NMS;
--tile-whole also runs the whole image. --batch-size then counts tiles. detections.json gives each image's "tiles"
and the settings under "tiling" (detection.tiling, docs/inference-and-export.md).

A video file given as the one --input (.mp4, .avi, .mov, .mkv, .webm, .m4v, ...) or --camera INDEX writes
<name>.mp4 (camera<INDEX>.mp4 for a camera; every frame with its detections drawn, same size and fps, mp4v) and
detections.jsonl (one line per processed frame: {"frame", "time" seconds, "height", "width", "detections"}).
--every N runs the detector on every N-th frame (0, N, 2N, ...); the video keeps all frames, each drawn with the
last processed frame's detections. --max-frames stops early; Ctrl-C stops a camera (the files are complete).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resbackbone.errors import OutputError, report_input_error

if TYPE_CHECKING:
    from detection.predictor import Predictor
    from detection.tiling import TiledPredictor, TileOptions
    from detection.tta import TTAOptions


logger = logging.getLogger("infer")


# The name in this tool's one-line errors ("infer: error: ...", argparse's form).
PROG = "infer"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model_final.pth or a training checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="image files, directories of images, or glob patterns "
                                                "('shots/**/*.jpg'; quote them); or one video file")
    src.add_argument("--eval-dataset", help="score the predictions on this test set (e.g. voc07-test, or "
                                            "coco:ANN.json:IMAGE_DIR, voc:FOLDER:SPLIT, yolo:DATA.yaml:val)")
    src.add_argument("--camera", type=int, metavar="INDEX", help="read frames from this camera (0: the first)")
    p.add_argument("--recursive", action="store_true", help="also the images in sub-folders of --input folders")
    p.add_argument("--data-root", default=None, help="data root for --eval-dataset (see datasets/README.md)")
    p.add_argument("--output", default="output/infer", help="directory for drawn images and JSON files")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="minimum score to draw and to write to the JSON files (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1, help="images (video frames; with --tile: tiles) per "
                                                             "forward pass")
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
                   help="fold BatchNorm into the convolutions: now the default (see --exact); kept for old commands")
    p.add_argument("--fp32", action="store_true",
                   help="float32 only: no bf16 autocast (which the Predictor uses on CPUs with bf16 instructions)")
    p.add_argument("--exact", action="store_true",
                   help="the model exactly as trained: no BN folding, no channels_last, float32 (reference runs)")
    p.add_argument("--no-draw", action="store_true", help="only write the JSON files (no drawn images / video)")
    p.add_argument("--tile", type=int, metavar="SIZE", default=None,
                   help="tiled inference: SIZE x SIZE tiles (original pixels, >= 32), each run as an image")
    p.add_argument("--tile-overlap", type=float, metavar="FRACTION", default=None,
                   help="fraction of the tile shared by neighbouring tiles, in [0, 1) (default 0.25)")
    p.add_argument("--tile-whole", action="store_true",
                   help="with --tile: also run the whole image and merge its detections (large objects)")
    p.add_argument("--every", type=int, metavar="N", default=1,
                   help="video: run the detector on every N-th frame (default 1: all)")
    p.add_argument("--max-frames", type=int, metavar="N", default=None,
                   help="video: stop after N frames read (default: the whole video; a camera until Ctrl-C)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if Path(args.checkpoint).suffix.lower() == ".onnx":  # onnxruntime; the --input path imports no torch
        return main_onnx(args)
    from detection.tiling import tile_options
    from detection.tta import PAPER_SCALES, parse_tta
    from detection.video import is_video
    from resbackbone.errors import ConfigError, InputError

    for flag, value in (("--batch-size", args.batch_size), ("--every", args.every),
                        ("--max-frames", 1 if args.max_frames is None else args.max_frames)):
        if value < 1:
            return report_input_error(PROG, f"{flag} must be >= 1, got {value}")
    # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
    try:
        tta = parse_tta(args.tta, scales=args.scales or PAPER_SCALES)
        tiles = tile_options(args.tile, args.tile_overlap, args.tile_whole)
        videos = [item for item in args.input or [] if is_video(item) and not any(c in item for c in "*?[")]
        if args.camera is not None or videos:
            if videos and len(args.input) > 1:
                raise ConfigError(f"--input: a video is processed alone; got {len(args.input)} inputs with "
                                  f"{len(videos)} video(s) among them")
            return predict_video(args, tta, tiles, args.camera if args.camera is not None else Path(videos[0]))
        if args.every != 1 or args.max_frames is not None:
            raise ConfigError("--every / --max-frames apply to a video (--input clip.mp4) or --camera")
        if args.eval_dataset:
            return evaluate(args, tta, tiles)
        files, passed_over = collect_inputs(args.input, recursive=args.recursive)
        if passed_over:
            kinds = Counter(p.suffix.lower() or "(no suffix)" for p in passed_over.values())
            print(f"infer: passed over {len(passed_over)} file(s) that are not images it reads "
                  f"({', '.join(f'{k}: {n}' for k, n in kinds.most_common())}): "
                  f"{', '.join(list(passed_over)[:10])}{', ...' if len(passed_over) > 10 else ''}", file=sys.stderr)
        return predict(args, tta, tiles, files, passed_over)
    except InputError as e:
        return report_input_error(PROG, e)


def main_onnx(args: argparse.Namespace) -> int:
    """``--checkpoint model.onnx`` (tools/export_onnx.py): the same outputs from onnxruntime
    (detection.onnx_predictor). Images (``--input``) run without importing torch or torchvision; ``--eval-dataset``
    imports them for the evaluator only. TTA, tiling and video run on the PyTorch model (its .pth file)."""
    from resbackbone.errors import ConfigError, InputError

    if args.batch_size < 1:
        return report_input_error(PROG, f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        pytorch_only = [flag for flag, used in (("--tta", bool(args.tta)), ("--tile", args.tile is not None),
                                                ("--camera", args.camera is not None),
                                                ("--every / --max-frames", args.every != 1 or args.max_frames))
                        if used]
        if pytorch_only:
            raise ConfigError(f"{', '.join(pytorch_only)}: not for an .onnx detector (onnxruntime runs the exported "
                              "graph as it is); run the .pth checkpoint it was exported from")
        if args.eval_dataset:
            return evaluate(args, None, None)  # type: ignore[arg-type]
        files, passed_over = collect_inputs(args.input, recursive=args.recursive)
        if passed_over:
            print(f"infer: passed over {len(passed_over)} file(s) that are not images it reads: "
                  f"{', '.join(list(passed_over)[:10])}{', ...' if len(passed_over) > 10 else ''}", file=sys.stderr)
        return predict(args, None, None, files, passed_over)  # type: ignore[arg-type]
    except InputError as e:
        return report_input_error(PROG, e)


def collect_inputs(inputs: list[str], *, recursive: bool = False) -> tuple[dict[Path, str], dict[str, Path]]:
    """The images of ``--input`` as ``{file: its name in the output}`` (sorted), and the files of its folders /
    patterns that are not images this tool reads, ``{name: file}``.

    Each item is a file (taken whatever its suffix: the decoder reports it if it is no image), a folder (its images;
    with ``recursive`` those of its sub-folders too) or a glob pattern (``**`` spans folders). Output names are
    paths relative to the folder searched, so equal file names in two sub-folders stay apart.
    """
    from detection.images import IMAGE_SUFFIXES
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


def make_predictors(args: argparse.Namespace, tta: TTAOptions, tiles: TileOptions | None,
                    **kwargs: Any) -> tuple[Predictor, Predictor | TiledPredictor]:
    """The Predictor of ``--checkpoint`` and what runs the images: itself, or with ``--tile`` a TiledPredictor over
    it (``--batch-size`` tiles per forward pass). ``kwargs``: more Predictor.from_checkpoint arguments. An
    ``.onnx`` checkpoint gives an OnnxPredictor (onnxruntime, no torch imported; no TTA or tiling)."""
    if Path(args.checkpoint).suffix.lower() == ".onnx":
        from detection.onnx_predictor import OnnxPredictor

        onnx = OnnxPredictor(args.checkpoint, score_thresh=kwargs.get("score_thresh", 0.0), min_size=args.min_size,
                             max_size=args.max_size)
        return onnx, onnx  # type: ignore[return-value]
    from detection.predictor import Predictor, choose_device
    from detection.tiling import TiledPredictor

    # The Predictor's fast defaults (BN folded, channels_last, bf16 only on bf16 hardware); --fp32: no bf16;
    # --exact: the model as trained.
    predictor = Predictor.from_checkpoint(args.checkpoint, device=choose_device(cpu=args.cpu), tta=tta,
                                          min_size=args.min_size, max_size=args.max_size, exact=args.exact,
                                          bf16=False if args.fp32 else None, **kwargs)
    if tiles is None:
        return predictor, predictor
    return predictor, TiledPredictor(predictor, tiles, batch_size=args.batch_size)


def describe_run(predictor: Predictor, args: argparse.Namespace, tiles: TileOptions | None) -> str:
    """``on cpu, 3 classes, test size 128/256, tta=off, tiles 512 px (overlap 0.25)`` for the log."""
    text = (f"on {predictor.device} ({predictor.settings}), {len(predictor.class_names)} classes, test size "
            f"{predictor.min_size}/"
            f"{predictor.max_size}, tta={args.tta or 'off'}")
    if tiles is not None:
        text += (f", tiles {tiles.size} px (overlap {tiles.overlap:g}{', + whole image' if tiles.whole else ''}; "
                 f"each tile at the test size)")
    return text


def predict(args: argparse.Namespace, tta: TTAOptions, tiles: TileOptions | None, names: dict[Path, str],
            passed_over: dict[str, Path] | None = None) -> int:
    """Drawn detections and JSON files for the files of ``names`` (file -> name in the output)."""
    import cv2
    from tqdm import tqdm

    from detection.results import detections_to_json
    from detection.visualize import draw_detections

    predictor, runner = make_predictors(args, tta, tiles, score_thresh=args.score_thresh)
    class_names = predictor.class_names
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list(names)
    logger.info("%d image(s) %s -> %s", len(files), describe_run(predictor, args, tiles), out_dir)
    per_image: dict[str, dict] = {}
    coco: list[dict] = []
    # The user's own ids where the detector file knows them (the data it was trained and tested on): COCO
    # results then score against the user's JSON as they are. Otherwise position / label + 1.
    meta = predictor.dataset_meta
    category_ids = list(meta.get("category_ids") or range(1, len(class_names) + 1))
    known_ids = meta.get("image_ids") or {}
    index = integer_image_ids(names, known_ids)
    if known_ids:
        logger.info("%d of %d file name(s) have an image id of the training / test data",
                    sum(p.name in known_ids for p in files), len(files))
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(runner.predict_files(files, args.batch_size, skipped=skipped), total=len(files), desc="infer",
               disable=len(files) < 2, dynamic_ncols=True)
    num_tiles = 0
    for path, image, det in bar:
        key = names[path]
        entry: dict[str, Any] = {"image_id": index[path], "height": int(image.shape[0]),
                                 "width": int(image.shape[1]), "detections": detections_to_json(det, class_names)}
        if tiles is not None:
            entry["tiles"] = runner.num_tiles(*image.shape[:2])
            num_tiles += entry["tiles"]
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
    if tiles is not None:
        report["tiling"] = {**runner.describe(), "tiles": num_tiles}
    (out_dir / "detections.json").write_text(json.dumps(report, indent=1))
    (out_dir / "coco_results.json").write_text(json.dumps(coco))
    total = sum(len(v["detections"]) for v in per_image.values())
    logger.info("%d detection(s) >= %.2f in %d image(s)%s; wrote %s", total, args.score_thresh, len(per_image),
                f" from {num_tiles} tiles" if tiles is not None else "", out_dir)
    for _, reason in skipped:  # the reason names the file
        print(f"infer: skipped: {reason}", file=sys.stderr)
    if skipped and not per_image:
        return report_input_error(PROG, f"none of the {len(files)} file(s) could be decoded")
    if skipped:
        logger.warning("%d of %d file(s) could not be decoded and were skipped (listed under 'skipped' in "
                       "detections.json)", len(skipped), len(files))
    return 0


def evaluate(args: argparse.Namespace, tta: TTAOptions, tiles: TileOptions | None) -> int:
    """Predict over a test set with the chosen TTA (and tiling) and score it with the dataset's evaluator."""
    from tqdm import tqdm

    from detection.data import DetectionTransform, build_dataset
    from detection.evaluation import build_evaluator, check_classes, format_metrics, score_predictions

    predictor, runner = make_predictors(args, tta, tiles)
    logger.info("%s %s", args.eval_dataset, describe_run(predictor, args, tiles))
    ds = build_dataset(args.eval_dataset, args.data_root, train=False, classes=predictor.class_names,
                       transform=DetectionTransform.resize_only(predictor.min_size, predictor.max_size))
    check_classes(predictor.class_names, ds, what=args.checkpoint)
    records = ds.records
    # The predictor decodes the original files itself (TTA resizes them per scale); the evaluator gets the same
    # targets the test loader would give.
    results = runner.predict_files([r.file for r in records], args.batch_size)
    tile_counts: list[int] = []

    def pairs() -> Iterator[tuple[dict[str, Any], dict]]:
        for i, (_, image, det) in enumerate(tqdm(results, total=len(records), desc="eval", dynamic_ncols=True)):
            h, w = int(image.shape[0]), int(image.shape[1])
            if tiles is not None:
                tile_counts.append(runner.num_tiles(h, w))
            yield {"index": i, "image_id": records[i].image_id, "orig_size": (h, w)}, det

    metrics = score_predictions(pairs(), build_evaluator(ds))
    metrics["tta"] = args.tta or "off"
    if tiles is not None:
        metrics["tiling"] = {**runner.describe(), "tiles": sum(tile_counts),
                             "tiles_per_image": sum(tile_counts) / max(len(tile_counts), 1)}
        logger.info("%d tiles for %d images (%.1f per image)", sum(tile_counts), len(tile_counts),
                    metrics["tiling"]["tiles_per_image"])
    print(format_metrics(metrics))
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    return 0


def predict_video(args: argparse.Namespace, tta: TTAOptions, tiles: TileOptions | None, source: Path | int) -> int:
    """A video file or camera: the annotated video and detections.jsonl (one line per processed frame)."""
    import time

    from detection.results import detections_to_json
    from detection.video import VideoReader, VideoWriter, predict_frames
    from detection.visualize import draw_detections
    from resbackbone.errors import ConfigError, DataError

    out_dir = Path(args.output)
    name = f"camera{source}" if isinstance(source, int) else source.stem
    target = out_dir / f"{name}.mp4"
    if isinstance(source, Path) and target.resolve() == source.resolve():
        raise ConfigError(f"--output {out_dir}: the annotated video would overwrite the input {source}")
    # The source first: a file or camera that cannot be read fails before the model loads.
    with VideoReader(source) as reader:
        predictor, runner = make_predictors(args, tta, tiles, score_thresh=args.score_thresh)
        class_names = predictor.class_names
        category_ids = list(predictor.dataset_meta.get("category_ids") or range(1, len(class_names) + 1))
        info = reader.info
        out_dir.mkdir(parents=True, exist_ok=True)
        logger.info("%s: %dx%d, %.2f fps, %s frames; every %d frame(s) %s -> %s", reader.name, info.width,
                    info.height, info.fps, info.frame_count if info.frame_count >= 0 else "unknown number of",
                    args.every, describe_run(predictor, args, tiles), out_dir)
        read = processed = found = 0
        writer: VideoWriter | None = None
        start = time.perf_counter()
        frames = predict_frames(runner, reader.frames(args.max_frames), batch_size=args.batch_size, every=args.every)
        with (out_dir / "detections.jsonl").open("w") as lines:
            try:
                for frame, det, is_processed in frames:
                    read += 1
                    h, w = frame.image.shape[:2]
                    if is_processed:
                        dets = detections_to_json(det, class_names)
                        for d in dets:
                            d["category_id"] = category_ids[d["label"]]
                        record: dict[str, Any] = {"frame": frame.index, "time": round(frame.time, 4), "height": h,
                                                  "width": w, "detections": dets}
                        if tiles is not None:
                            record["tiles"] = runner.num_tiles(h, w)
                        lines.write(json.dumps(record) + "\n")
                        processed += 1
                        found += len(dets)
                    if not args.no_draw:
                        if writer is None:  # sized by the first decoded frame, not by what the container claims
                            writer = VideoWriter(target, info.fps, w, h)
                        writer.write(draw_detections(frame.image, det["boxes"], det["labels"], det["scores"],
                                                     class_names, score_thresh=args.score_thresh))
            except KeyboardInterrupt:
                logger.warning("stopped by Ctrl-C after %d frame(s)", read)
            finally:
                if writer is not None:
                    writer.close()
    seconds = time.perf_counter() - start
    if read == 0:
        raise DataError(f"{reader.name}: no frame could be decoded")
    logger.info("%d frame(s) read, %d processed (%.2f frames/s), %d detection(s) >= %.2f; wrote %s%s",
                read, processed, processed / max(seconds, 1e-9), found, args.score_thresh,
                out_dir / "detections.jsonl", f" and {target} ({writer.frames_written} frames)" if writer else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
