#!/usr/bin/env python
"""Train / evaluate a ResNet classifier (paper section 3.4 ImageNet and 4.2 CIFAR-10 recipes) with accelerate.

    python tools/train_cls.py                                        # embedded synthetic set, ~1-2 min on CPU
    python tools/train_cls.py --config configs/cls/cifar10_resnet110.yaml
    accelerate launch --num_processes 8 tools/train_cls.py --config configs/cls/imagenet_resnet50.yaml
    python tools/train_cls.py --config ... --resume                   # continue exactly
    python tools/train_cls.py --config ... --eval-only --checkpoint output/x/model_0010000.pth

The final ``<output-dir>/backbone_weights.pth`` of an ImageNet-style ResNet is what
``tools/train_det.py --backbone-weights PATH`` loads (transfer learning into the detector).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from resbackbone.classification import ClassificationTrainer, load_cls_config
from resbackbone.engine.checkpoint import CheckpointManager
from resbackbone.engine.progress import NonFiniteLossError
from resbackbone.engine.schedule import rescale_schedule
from resbackbone.errors import InputError, report_input_error

# The name in this tool's one-line errors ("train_cls: error: ...", argparse's form).
PROG = "train_cls"

def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (default: the synthetic smoke run)")
    p.add_argument("--dataset", help="synthetic | cifar10 | imagenet | folder:<path>")
    p.add_argument("--data-root", help="data root (default: $RESDET_DATA_ROOT or the repo's datasets/)")
    p.add_argument("--arch", help="resnet18..152, plain18..152, cifar_resnet20..1202, cifar_plain20..1202")
    p.add_argument("--output-dir")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-iter", type=int, help="iterations; the lr steps keep their relative positions")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output-dir")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--checkpoint", help="checkpoint for --eval-only")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    # Intermixed: key=value overrides may stand before, between or after the flags.
    args = p.parse_intermixed_args(argv)
    if args.eval_only and not args.checkpoint:
        return report_input_error(PROG, "--eval-only needs --checkpoint FILE")
    # Errors caused by the user's input are one line; anything else is a bug and keeps its traceback.
    try:
        cfg = load_cls_config(args.config, args.overrides)
        data, model, solver = cfg.data, cfg.model, cfg.solver
        if args.dataset:
            data = replace(data, dataset=args.dataset)
        if args.data_root:
            data = replace(data, root=args.data_root)
        if args.arch:
            model = replace(model, arch=args.arch)
        if args.epochs is not None:
            solver = replace(solver, epochs=args.epochs, max_iter=0)
        if args.max_iter is not None:
            solver = rescale_schedule(solver, args.max_iter)
        cfg = replace(cfg, data=data, model=model, solver=solver)
        if args.output_dir:
            cfg = replace(cfg, output_dir=args.output_dir)
        trainer = ClassificationTrainer(cfg, cpu=args.cpu, resume=args.resume, overwrite=args.overwrite,
                                        progress=not args.no_progress, evaluate_only=args.eval_only)
        if args.eval_only:
            trainer.load_weights(args.checkpoint)
            result = trainer.final_evaluation()
        else:
            result = trainer.train()
    except InputError as e:
        return report_input_error(PROG, e)
    except NonFiniteLossError as e:
        latest = CheckpointManager(cfg.output_dir).latest()
        kept = f"the last good checkpoint is {latest}" if latest else f"no checkpoint was written to {cfg.output_dir}"
        print(f"{PROG}: error: {e}; {kept}", file=sys.stderr)
        return 3
    if trainer.accelerator.is_main_process:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
