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
    python tools/train_det.py --dataset voc:my_set --recipe cpu --log-with tensorboard,wandb test.val_loss=true \
        test.patience=3 solver.ema_decay=0.999 data.repeat_factor_threshold=0.1    # docs/fine-tuning.md

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
from dataclasses import fields, replace
from pathlib import Path

from detection.config import DetectionConfig
from detection.data.catalog import describe_spec
from detection.recipes import RECIPES, RunOptions, resolve_run_config
from resbackbone.engine.checkpoint import CheckpointManager
from resbackbone.engine.progress import NonFiniteLossError
from resbackbone.engine.trainer import TrainingInterrupted
from resbackbone.errors import InputError, report_input_error

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
    p.add_argument("--log-with", type=_tracker_list, metavar="TRACKER[,TRACKER]",
                   help="experiment trackers for the logged numbers and the config (log_with): tensorboard (the "
                        "default), wandb, mlflow, comet_ml, clearml, aim, dvclive (their pip package installed), "
                        "or none")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    # Intermixed: key=value overrides may stand before, between or after the flags.
    args = p.parse_intermixed_args(argv)
    if args.log_with is not None:  # the config field log_with, set after the other overrides
        args.overrides = [*args.overrides, f"log_with=[{','.join(args.log_with)}]"]
    return args


def _tracker_list(text: str) -> list[str]:
    """``--log-with wandb,tensorboard`` -> the names, checked (``none``: no tracker)."""
    from resbackbone.engine.trackers import TRACKER_PACKAGES

    names = [t.strip() for t in text.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in names if t not in TRACKER_PACKAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tracker(s) {', '.join(unknown)}; expected some of "
                                         f"{', '.join(TRACKER_PACKAGES)} or none")
    return names


def run_options(args: argparse.Namespace) -> RunOptions:
    """The command line as :class:`detection.recipes.RunOptions` (one field per flag)."""
    return RunOptions(**{f.name: getattr(args, f.name) for f in fields(RunOptions)})


def resolve_config(args: argparse.Namespace) -> DetectionConfig:
    """The run's config: :func:`detection.recipes.resolve_run_config` of the command line."""
    return resolve_run_config(run_options(args))


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
