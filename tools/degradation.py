#!/usr/bin/env python
"""The paper's degradation experiment (Figure 6): plain vs residual nets of two depths, same recipe, error curves.

    python tools/degradation.py                                   # CIFAR-style 20/56 on the synthetic set, CPU
    python tools/degradation.py --dataset cifar10 --depths 20 56 --epochs 160 --output fig6.png   # the paper's

Trains cifar_plain{d} and cifar_resnet{d} for each depth with one recipe and plots training error (dashed) and
validation error (solid) per epoch to a PNG; the per-run metrics stay in ``<workdir>/<arch>/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resbackbone.classification import ClassificationTrainer, load_cls_config
from resbackbone.errors import InputError, report_input_error

# The name in this tool's one-line errors ("degradation: error: ...", argparse's form).
PROG = "degradation"


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except InputError as e:
        return report_input_error(PROG, e)


def run(argv: list[str] | None = None) -> int:
    """Train the plain / residual pairs and plot them (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--depths", type=int, nargs=2, default=(20, 56))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", default="output/degradation")
    p.add_argument("--output", default="output/degradation/degradation.png")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every run")
    args = p.parse_args(argv)
    curves: dict[str, list[dict]] = {}
    for depth in args.depths:
        for kind in ("plain", "resnet"):
            arch = f"cifar_{kind}{depth}"
            out = Path(args.workdir) / arch
            cfg = load_cls_config(None, [f"model.arch={arch}", f"data.dataset={args.dataset}",
                                         f"solver.epochs={args.epochs}", f"solver.ims_per_batch={args.batch_size}",
                                         f"output_dir={out}", *([f"data.root={args.data_root}"] if args.data_root
                                                                else []), *args.overrides])
            # The script's own scratch folders: a re-run of the experiment replaces its earlier runs.
            result = ClassificationTrainer(cfg, cpu=args.cpu, progress=False, overwrite=True).train()
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            curves[arch] = [r for r in rows if "train_error" in r]
            print(f"{arch}: final train error {curves[arch][-1]['train_error']:.3f}, "
                  f"val error {curves[arch][-1]['val_top1_error']:.3f}, test {result}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("plain", "resnet")):
        for depth, colour in zip(args.depths, ("tab:orange", "tab:red")):
            rows = curves[f"cifar_{kind}{depth}"]
            epochs = [r["epoch"] for r in rows]
            ax.plot(epochs, [100 * r["train_error"] for r in rows], "--", color=colour, label=f"{kind}-{depth} train")
            ax.plot(epochs, [100 * r["val_top1_error"] for r in rows], "-", color=colour, label=f"{kind}-{depth} val")
        ax.set_title(f"{'plain' if kind == 'plain' else 'ResNet'} ({args.dataset})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("error (%)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
