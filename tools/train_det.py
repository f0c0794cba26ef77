#!/usr/bin/env python
"""Train (fine-tune) and evaluate the Faster R-CNN detector (C4, DC5 or FPN).

    python tools/train_det.py                                   # embedded synthetic set: trains, evaluates
    python tools/train_det.py --dataset voc07+12 --backbone resnet101
    accelerate launch --num_processes 8 tools/train_det.py --dataset coco2017-train --config configs/det/coco_c4_1x.yaml
    python tools/train_det.py --output-dir output/x --resume     # continue a killed run exactly
    python tools/train_det.py --eval-only --checkpoint output/x/model_final.pth
    python tools/train_det.py --config my.yaml --init-from r50_c4_coco.pth   # fine-tune a trained detector
    python tools/train_det.py --dataset coco:train.json:images/ --test-dataset coco:val.json:images/ \
        --init-from r50_fpn_coco.pth                               # your own data (configs/det/finetune_fpn.yaml)
    python tools/train_det.py --dataset voc:my_set --recipe cpu --epochs 12 --imgsz 320 --batch 4   # on a CPU

Ctrl-C (or SIGTERM) stops at the end of the current step with a checkpoint; ``--resume`` continues from it.

Free ``key=value`` arguments override any config field (``solver.base_lr=0.01 model.rpn.nms_thresh=0.6``);
unknown keys are rejected with their name. The resolved config goes to ``<output-dir>/config.yaml`` and into
every checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from detection.backbone import RESNET_NAMES
from detection.config import (
    DEFAULT_CONFIGS,
    DEFAULT_TEST_SETS,
    RECIPES,
    DetectionConfig,
    default_config_name,
    load_detection_config,
)
from detection.data.catalog import (
    canonical_spec,
    default_test_spec,
    describe_spec,
    parse_dataset_spec,
    read_class_list,
)
from resbackbone.engine.checkpoint import CheckpointManager
from resbackbone.engine.config import parse_overrides
from resbackbone.engine.progress import NonFiniteLossError
from resbackbone.engine.schedule import apply_linear_scaling, rescale_schedule
from resbackbone.engine.trainer import TrainingInterrupted
from resbackbone.errors import ConfigError, InputError, report_input_error

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "det"


# The name in this tool's one-line errors ("train_det: error: ...", argparse's form).
PROG = "train_det"

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the paper's setting for --dataset, see configs/det)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="fine-tuning recipe for your own data: default (configs/det/finetune_fpn.yaml) or cpu "
                        "(configs/det/finetune_c4_cpu.yaml: ResNet-18, small images, few RoIs, AdamW)")
    p.add_argument("--dataset", help="training set: a name (voc07+12, coco2017-train; default synthetic-train) or "
                                     "your own: coco:ANN.json:IMAGE_DIR, voc:FOLDER[:SPLIT], yolo:DATA.yaml[:SPLIT]")
    p.add_argument("--test-dataset", help="evaluation set, same forms (default: from the config; a YOLO set's "
                                          "val split)")
    p.add_argument("--classes", help="class list for VOC-style folders: a file (one name per line) or a,b,c "
                                     "(default: the names in the training XML, sorted)")
    p.add_argument("--backbone", help="resnet18..resnet152 (ours), or any other timm model name (also as timm:<name>)")
    p.add_argument("--backbone-weights", help="none | torchvision | timm | msra | PATH to a weights file")
    p.add_argument("--init-from", metavar="DETECTOR",
                   help="start from a trained detector (ours or converted from Detectron2 by convert_weights.py); "
                        "same as model.weights=DETECTOR")
    p.add_argument("--data-root", help="data root (default: $RESDET_DATA_ROOT or the repo's datasets/)")
    p.add_argument("--output-dir", help="checkpoints, logs, metrics, resolved config")
    p.add_argument("--max-iter", type=int, help="iterations; the lr steps keep their relative positions")
    p.add_argument("--epochs", type=float, help="epochs of the training set (solver.max_epochs); the lr steps "
                                                "keep their relative positions")
    p.add_argument("--imgsz", type=int, help="image size: the shorter side in training and test, in pixels "
                                             "(data.min_size_train=[N], data.min_size_test=N)")
    p.add_argument("--batch", type=int, help="images per step (solver.ims_per_batch); the lr follows by the "
                                             "linear scaling rule")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --output-dir (its checkpoints, final weights and metrics)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --checkpoint on the test set")
    p.add_argument("--checkpoint", help="model file for --eval-only")
    p.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    # Intermixed: key=value overrides may stand before, between or after the flags.
    return p.parse_intermixed_args(argv)


# Folder and file names that say nothing about a dataset (an export's split folder, the usual JSON names): the
# default output folder is named after the first meaningful one above them.
_GENERIC_NAMES = {"annotations", "annotation", "annots", "instances", "labels", "images", "train", "training",
                  "val", "valid", "validation", "test", "data", "dataset", "datasets", "export", "coco", "voc",
                  "yolo", "trainval", "default", "json"}


def _override_value(overrides: list[str], key: str) -> object:
    """The value a ``key=value`` override gives ``key`` (dotted), or None."""
    node: object = parse_overrides(overrides)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dataset_label(spec: object) -> str:
    """A folder-name-safe name for a user's dataset: its folder, or its JSON / YAML file's stem when that is not
    a generic name (``pets/train/_annotations.coco.json`` -> ``pets``)."""
    path = Path(parse_dataset_spec(spec)[0].path).expanduser().resolve()
    # A file's name up to its first dot ("_annotations.coco.json" -> "_annotations"), then the folders above it.
    names = [path.name.split(".")[0] if path.suffix else path.name, *(q.name for q in path.parents)]
    for name in (n.strip("_-. ") for n in names):
        if name and not set(name.lower().replace("-", "_").split("_")) <= _GENERIC_NAMES:
            return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return "dataset"


def resolve_config(args: argparse.Namespace) -> DetectionConfig:
    """Config file <- overrides <- dedicated flags, then the linear lr scaling rule and ``--max-iter``."""
    # The training set named on the command line: --dataset, or data.train=... among the overrides (both choose
    # the fine-tuning recipe for own data, not the synthetic one).
    train_override = _override_value(args.overrides, "data.train")
    train_spec = args.dataset or train_override
    if args.config and args.recipe:
        raise ConfigError("--recipe chooses the config file; give either --recipe or --config, not both")
    name = default_config_name(train_spec, args.recipe or "default")
    path = Path(args.config) if args.config else CONFIG_DIR / name
    cfg = load_detection_config(path, args.overrides)
    own_data = train_spec is not None and not (isinstance(train_spec, str) and train_spec in DEFAULT_CONFIGS)
    data = cfg.data
    if args.dataset:
        data = replace(data, train=args.dataset)
        if not args.test_dataset and args.dataset in DEFAULT_TEST_SETS:
            data = replace(data, test=DEFAULT_TEST_SETS[args.dataset])
    if own_data and not args.test_dataset and _override_value(args.overrides, "data.test") is None and (
            args.dataset or data.test is None):
        data = replace(data, test=default_test_spec(data.train))
    if data.train is None:
        raise ConfigError(f"{path} names no training set: pass --dataset (or data.train=...)")
    if args.test_dataset:
        data = replace(data, test=args.test_dataset)
    if args.classes:
        data = replace(data, classes=read_class_list(args.classes))
    if args.data_root:
        data = replace(data, root=args.data_root)
    if args.imgsz is not None:
        if args.imgsz < 1:
            raise ConfigError(f"--imgsz must be >= 1, got {args.imgsz}")
        # The long-side caps keep their ratio to the short side's old value, so shapes stay as the recipe meant.
        n = args.imgsz
        data = replace(data, min_size_train=(n,), min_size_test=n,
                       max_size_train=max(n, round(data.max_size_train * n / max(data.min_size_train))),
                       max_size_test=max(n, round(data.max_size_test * n / data.min_size_test)))
    # Absolute paths in the resolved config: a resume or an evaluation from another directory finds the data.
    data = replace(data, train=canonical_spec(data.train, "data.train"), test=canonical_spec(data.test, "data.test"))
    bb = cfg.model.backbone
    if args.backbone:
        name = args.backbone
        if not name.startswith("timm:") and name not in RESNET_NAMES:
            name = "timm:" + name  # any other name is a timm model (checked when the model is built)
        bb = replace(bb, name=name)
        if name.startswith("timm:") and not args.backbone_weights and bb.weights != "none":
            # The config's ImageNet init (torchvision / msra) names weights of our ResNets; a timm network's
            # ImageNet weights are its own timm ones.
            bb = replace(bb, weights="timm")
    if args.backbone_weights:
        bb = replace(bb, weights=args.backbone_weights)
    model = replace(cfg.model, backbone=bb)
    if args.init_from:
        model = replace(model, weights=args.init_from)
    cfg = replace(cfg, data=data, model=model)
    if args.output_dir:
        cfg = replace(cfg, output_dir=args.output_dir)
    elif own_data and cfg.output_dir == f"output/{path.stem}" and _override_value(args.overrides, "output_dir") is None:
        # The recipe's generic folder would hold every dataset's run: name it after the data instead.
        cfg = replace(cfg, output_dir=f"output/{dataset_label(data.train)}_{path.stem.removeprefix('finetune_')}")
    solver = cfg.solver
    if args.batch is not None:
        if args.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {args.batch}")
        # The recipe's lr / schedule were written for its own batch size: the linear scaling rule moves them.
        solver = replace(solver, ims_per_batch=args.batch,
                         reference_ims_per_batch=solver.reference_ims_per_batch or solver.ims_per_batch)
    if args.epochs is not None:
        if args.max_iter is not None:
            raise ConfigError("--epochs and --max-iter both set the run's length; give one")
        if args.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {args.epochs}")
        fractions = solver.step_fractions
        if not solver.max_epochs and solver.max_iter > 0:  # an iteration schedule: its steps keep their places
            fractions = tuple(st / solver.max_iter for st in solver.steps if 0 < st < solver.max_iter)
        solver = replace(solver, max_epochs=args.epochs, step_fractions=fractions)
    solver = apply_linear_scaling(solver)
    if args.max_iter is not None and solver.max_epochs > 0:
        # An explicit iteration count replaces an epoch schedule; its lr steps keep their fractions.
        n = args.max_iter
        solver = replace(solver, max_epochs=0.0, max_iter=n, step_fractions=(),
                         steps=tuple(sorted({max(1, round(f * n)) for f in solver.step_fractions if round(f * n) < n})),
                         warmup_iters=min(solver.warmup_iters, max(n // 4, 1)))
    elif args.max_iter is not None:
        solver = rescale_schedule(solver, args.max_iter)
    return replace(cfg, solver=solver)


def evaluate_checkpoint(args: argparse.Namespace, cfg: DetectionConfig) -> int:
    """``--eval-only``: the checkpoint's model (its own test size) on this invocation's data settings."""
    from accelerate import Accelerator

    from detection.checkpoint import load_detector
    from detection.train import evaluate

    accelerator = Accelerator(cpu=args.cpu)
    model, saved_cfg, _ = load_detector(args.checkpoint, accelerator.device)
    # The data section comes from this invocation (dataset, root, workers); the test size from the checkpoint.
    data = replace(cfg.data, min_size_test=saved_cfg.data.min_size_test, max_size_test=saved_cfg.data.max_size_test)
    if args.dataset or args.test_dataset:
        data = replace(data, test=args.test_dataset or args.dataset)
    metrics = evaluate(model, replace(saved_cfg, data=data, test=cfg.test), accelerator=accelerator,
                       progress=not args.no_progress)
    if accelerator.is_main_process:
        print(json.dumps({k: v for k, v in metrics.items() if k != "per_class"}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.eval_only and not args.checkpoint:
        return report_input_error(PROG, "--eval-only needs --checkpoint FILE")
    # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
    try:
        cfg = resolve_config(args)
        if args.eval_only:
            return evaluate_checkpoint(args, cfg)
        from detection.checkpoint import FINAL_WEIGHTS_NAME
        from detection.train import Trainer

        trainer = Trainer(cfg, cpu=args.cpu, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.no_progress)
        result = trainer.train()
    except InputError as e:
        return report_input_error(PROG, e)
    except TrainingInterrupted as e:
        # The checkpoint of that step is written; the usual exit status of a run ended by this signal.
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # before the first step or during the final evaluation: no traceback either
        latest = CheckpointManager(cfg.output_dir).latest() if "cfg" in locals() else None
        print("interrupted" + (f"; the last checkpoint is {latest} (`--resume` continues from it)" if latest
                               else " before any checkpoint was written"), file=sys.stderr)
        return 130
    except NonFiniteLossError as e:
        latest = CheckpointManager(cfg.output_dir).latest()
        kept = f"the last good checkpoint is {latest}" if latest else f"no checkpoint was written to {cfg.output_dir}"
        print(f"{PROG}: error: {e}; {kept}", file=sys.stderr)
        return 3
    if trainer.accelerator.is_main_process:
        summary = {k: v for k, v in result.items() if k not in ("per_class", "log") and not isinstance(v, dict)}
        print(json.dumps(summary, indent=1))
        if "mAP" in result:
            final = Path(cfg.output_dir) / FINAL_WEIGHTS_NAME
            # The COCO metric's mAP is AP at IoU 0.50:0.95; the VOC metrics' is AP at 0.5.
            what = (f"AP@[.5:.95] = {result['mAP']:.4f}, AP50 = {result['AP50']:.4f}" if "AP50" in result and
                    "iou_thresh" not in result else f"mAP@0.5 = {result['mAP']:.4f}")
            print(f"{describe_spec(cfg.data.test)}: {what}  (model: {final})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
