"""From what a user asks for to a resolved :class:`~detection.config.DetectionConfig`: the one set of rules that
``tools/train_det.py`` and the Python API share.

    from detection.recipes import RunOptions, resolve_run_config
    from detection.train import Trainer

    cfg = resolve_run_config(RunOptions(dataset="coco:train.json:images/", epochs=12, batch=4))
    Trainer(cfg).train()

The rules, in order: the config file (``config``, else the paper's setting for a catalog dataset, else the
fine-tuning ``recipe`` for a user's own data) <- ``key=value`` overrides <- the dedicated options (dataset, test
set, classes, backbone, image size, batch with the linear lr scaling rule, epochs or iterations). A user's own
training set without a test set is evaluated on its own ``val`` split where it has one; its run folder is named
after the data.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from resbackbone.engine.config import parse_overrides
from resbackbone.engine.schedule import apply_linear_scaling, rescale_schedule
from resbackbone.errors import ConfigError

from .backbone import RESNET_NAMES
from .config import DetectionConfig, SolverConfig, load_detection_config
from .data.catalog import (
    COCO_SETS,
    SYNTHETIC_SETS,
    VOC_SETS,
    canonical_spec,
    default_test_spec,
    parse_dataset_spec,
    read_class_list,
)

# The fine-tuning recipes for a user's own data: the default (R50-FPN, GPU-sized, what Detectron2 and torchvision
# users fine-tune from) and the CPU-sized one (ResNet-18 C4, small images, few RoIs, AdamW).
RECIPES: dict[str, str] = {"default": "finetune_fpn.yaml", "cpu": "finetune_c4_cpu.yaml"}
# The paper's setting for each family of catalog datasets (the catalog owns the names).
_FAMILY_CONFIGS = {"synthetic": "synthetic_r18_c4.yaml", "voc": "voc07+12_c4.yaml", "coco": "coco_c4_paper.yaml"}
# Catalog names whose paper setting differs from their family's: VOC 2012's training set (07++12).
_NAMED_CONFIGS = {"voc07++12": "voc07++12_c4.yaml"}
# The folder of the shipped configs inside a source checkout; an installed package carries them as
# ``resdet_configs`` (see pyproject.toml).
_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Folder and file names that say nothing about a dataset (an export's split folder, the usual JSON names): the
# default output folder is named after the first meaningful one above them.
_GENERIC_NAMES = {"annotations", "annotation", "annots", "instances", "labels", "images", "train", "training",
                  "val", "valid", "validation", "test", "data", "dataset", "datasets", "export", "coco", "voc",
                  "yolo", "trainval", "default", "json"}


def config_dir(kind: str = "det") -> Path:
    """The folder of the shipped ``kind`` configs (``det`` or ``cls``): the checkout's ``configs/<kind>``, or the
    installed package's copy."""
    checkout = _CHECKOUT_CONFIGS / kind
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("resdet_configs")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the shipped configs were not found (neither a checkout's configs/ nor the installed "
                          "resdet_configs package); pass --config FILE")
    return Path(next(iter(spec.submodule_search_locations))) / kind


def default_config_name(dataset: Any, recipe: str = "default") -> str:
    """The config file name (in :func:`config_dir`) for training on ``dataset`` (None: the synthetic set).

    ``dataset``: a catalog name, or any description of a user's own data (a ``coco:...`` string, a mapping
    ``{format: coco, ...}``, a list of those), which gets the fine-tuning ``recipe`` of :data:`RECIPES`.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    if recipe != "default":
        return RECIPES[recipe]
    name = dataset or SYNTHETIC_SETS[0]
    if not isinstance(name, str):
        return RECIPES[recipe]
    family = ("synthetic" if name in SYNTHETIC_SETS else "voc" if name in VOC_SETS else
              "coco" if name in COCO_SETS else None)
    # A user's own dataset (any description that is not a catalog name): the small-dataset fine-tuning recipe.
    return _NAMED_CONFIGS.get(name) or _FAMILY_CONFIGS.get(family or "", RECIPES[recipe])


def is_catalog_name(spec: Any) -> bool:
    """True for a dataset name the catalog knows (``voc07+12``, ``coco2017-train``, ``synthetic-train``...)."""
    return isinstance(spec, str) and spec in (*VOC_SETS, *COCO_SETS, *SYNTHETIC_SETS)


def dataset_label(spec: Any) -> str:
    """A folder-name-safe name for a user's dataset: its folder, or its JSON / YAML file's stem when that is not
    a generic name (``pets/train/_annotations.coco.json`` -> ``pets``)."""
    path = Path(parse_dataset_spec(spec)[0].path).expanduser().resolve()
    # A file's name up to its first dot ("_annotations.coco.json" -> "_annotations"), then the folders above it.
    names = [path.name.split(".")[0] if path.suffix else path.name, *(q.name for q in path.parents)]
    for name in (n.strip("_-. ") for n in names):
        if name and not set(name.lower().replace("-", "_").split("_")) <= _GENERIC_NAMES:
            return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return "dataset"


def schedule_at_fractions(solver: SolverConfig, max_iter: int) -> SolverConfig:
    """An epoch schedule made concrete: ``max_iter`` iterations, the lr steps at ``solver.step_fractions`` of it
    (those landing at the end dropped), the warm-up at most a quarter of the run."""
    steps = {max(1, round(f * max_iter)) for f in solver.step_fractions}
    return replace(solver, max_iter=max_iter, steps=tuple(sorted(st for st in steps if st < max_iter)),
                   warmup_iters=min(solver.warmup_iters, max(max_iter // 4, 1)))


@dataclass
class RunOptions:
    """What a user asks of a training run; every field left None keeps the config's value.

    The command-line flags of ``tools/train_det.py`` map one to one onto these fields.
    """

    # A YAML config; None: the paper's setting for ``dataset`` or the fine-tuning ``recipe`` for own data.
    config: str | Path | None = None
    # "default" (R50-FPN) or "cpu" (ResNet-18 C4): the config for a user's own data (not with ``config``).
    recipe: str | None = None
    # Training set: a catalog name or a description of own data (coco:ANN.json:IMAGE_DIR, voc:FOLDER[:SPLIT],
    # yolo:DATA.yaml[:SPLIT], a mapping, a list of those).
    dataset: Any = None
    # Evaluation set, same forms; None: the config's, or own data's val split.
    test_dataset: Any = None
    # Class list for VOC-style folders: a file (one name per line) or "a,b,c".
    classes: str | None = None
    # resnet18..resnet152, or any other timm model name (also as timm:<name>).
    backbone: str | None = None
    # none | torchvision | timm | msra | a weights file.
    backbone_weights: str | None = None
    # A trained detector to start from (model.weights).
    init_from: str | None = None
    data_root: str | None = None
    output_dir: str | None = None
    # The run's length: iterations or epochs (one of them); the lr steps keep their relative positions.
    max_iter: int | None = None
    epochs: float | None = None
    # The shorter image side in training and test; the long-side caps keep their ratio.
    imgsz: int | None = None
    # Images per step; the lr and schedule follow by the linear scaling rule.
    batch: int | None = None
    # ``key=value`` config overrides (applied before the options above).
    overrides: Sequence[str] = field(default_factory=tuple)

    def override(self, key: str) -> Any:
        """The value an override gives the dotted ``key``, or None."""
        node: Any = parse_overrides(list(self.overrides))
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def resolve_run_config(opts: RunOptions) -> DetectionConfig:
    """The resolved config of a training run (see the module docstring for the order of the rules)."""
    # The training set asked for: dataset, or data.train=... among the overrides (both choose the fine-tuning
    # recipe for own data, not the synthetic one).
    train_spec = opts.dataset or opts.override("data.train")
    if opts.config and opts.recipe:
        raise ConfigError("--recipe chooses the config file; give either --recipe or --config, not both")
    path = Path(opts.config) if opts.config else config_dir() / default_config_name(train_spec,
                                                                                     opts.recipe or "default")
    cfg = load_detection_config(path, opts.overrides)
    own_data = train_spec is not None and not is_catalog_name(train_spec)
    cfg = replace(cfg, data=_resolve_data(cfg, opts, own_data, path), model=_resolve_model(cfg, opts))
    if opts.output_dir:
        cfg = replace(cfg, output_dir=opts.output_dir)
    elif own_data and cfg.output_dir == f"output/{path.stem}" and opts.override("output_dir") is None:
        # The recipe's generic folder would hold every dataset's run: name it after the data instead.
        cfg = replace(cfg, output_dir=f"output/{dataset_label(cfg.data.train)}_{path.stem.removeprefix('finetune_')}")
    return replace(cfg, solver=_resolve_solver(cfg.solver, opts))


def _resolve_data(cfg: DetectionConfig, opts: RunOptions, own_data: bool, path: Path) -> Any:
    data = cfg.data
    if opts.dataset:
        data = replace(data, train=opts.dataset)
        if not opts.test_dataset and opts.dataset in SYNTHETIC_SETS:
            data = replace(data, test=SYNTHETIC_SETS[1])
    if own_data and not opts.test_dataset and opts.override("data.test") is None and (
            opts.dataset or data.test is None):
        data = replace(data, test=default_test_spec(data.train))
    if data.train is None:
        raise ConfigError(f"{path} names no training set: pass --dataset (or data.train=...)")
    if opts.test_dataset:
        data = replace(data, test=opts.test_dataset)
    if opts.classes:
        data = replace(data, classes=read_class_list(opts.classes))
    if opts.data_root:
        data = replace(data, root=opts.data_root)
    if opts.imgsz is not None:
        if opts.imgsz < 1:
            raise ConfigError(f"--imgsz must be >= 1, got {opts.imgsz}")
        # The long-side caps keep their ratio to the short side's old value, so shapes stay as the recipe meant.
        n = opts.imgsz
        data = replace(data, min_size_train=(n,), min_size_test=n,
                       max_size_train=max(n, round(data.max_size_train * n / max(data.min_size_train))),
                       max_size_test=max(n, round(data.max_size_test * n / data.min_size_test)))
    # Absolute paths in the resolved config: a resume or an evaluation from another directory finds the data.
    return replace(data, train=canonical_spec(data.train, "data.train"), test=canonical_spec(data.test, "data.test"))


def _resolve_model(cfg: DetectionConfig, opts: RunOptions) -> Any:
    bb = cfg.model.backbone
    if opts.backbone:
        name = opts.backbone
        if not name.startswith("timm:") and name not in RESNET_NAMES:
            name = "timm:" + name  # any other name is a timm model (checked when the model is built)
        bb = replace(bb, name=name)
        if name.startswith("timm:") and not opts.backbone_weights and bb.weights != "none":
            # The config's ImageNet init (torchvision / msra) names weights of our ResNets; a timm network's
            # ImageNet weights are its own timm ones.
            bb = replace(bb, weights="timm")
    if opts.backbone_weights:
        bb = replace(bb, weights=opts.backbone_weights)
    model = replace(cfg.model, backbone=bb)
    return replace(model, weights=opts.init_from) if opts.init_from else model


def _resolve_solver(solver: SolverConfig, opts: RunOptions) -> SolverConfig:
    if opts.batch is not None:
        if opts.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {opts.batch}")
        # The recipe's lr / schedule were written for its own batch size: the linear scaling rule moves them.
        solver = replace(solver, ims_per_batch=opts.batch,
                         reference_ims_per_batch=solver.reference_ims_per_batch or solver.ims_per_batch)
    if opts.epochs is not None:
        if opts.max_iter is not None:
            raise ConfigError("--epochs and --max-iter both set the run's length; give one")
        if opts.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {opts.epochs}")
        fractions = solver.step_fractions
        if not solver.max_epochs and solver.max_iter > 0:  # an iteration schedule: its steps keep their places
            fractions = tuple(st / solver.max_iter for st in solver.steps if 0 < st < solver.max_iter)
        solver = replace(solver, max_epochs=opts.epochs, step_fractions=fractions)
    solver = apply_linear_scaling(solver)
    if opts.max_iter is not None and solver.max_epochs > 0:
        if opts.max_iter < 1:
            raise ConfigError(f"--max-iter must be >= 1, got {opts.max_iter}")
        # An explicit iteration count replaces an epoch schedule; its lr steps keep their fractions.
        return replace(schedule_at_fractions(solver, opts.max_iter), max_epochs=0.0, step_fractions=())
    if opts.max_iter is not None:
        return rescale_schedule(solver, opts.max_iter)
    return solver
