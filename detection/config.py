"""The detection configuration tree: typed dataclasses with a comment on every field.

``build_faster_rcnn(cfg.model)`` and the trainer are the only consumers; modules never receive config
objects. Defaults are the paper's C4 setting (He et al. 2016, Appendix A, on top of Ren et al. 2015);
``configs/det/*.yaml`` override them. Load with :func:`load_detection_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from resbackbone.engine.config import load_config
from resbackbone.engine.schedule import SolverConfig as BaseSolverConfig


@dataclass
class BackboneConfig:
    # "resnet18".."resnet152", or "timm:<name>" for any timm features_only CNN.
    name: str = "resnet50"
    # Initial weights: "none" (random init), "torchvision", "timm", "msra", or a path to a weights file.
    weights: str = "none"
    # 0 nothing frozen, 1 stem, 2 stem+res2 (detection default), ... Frozen by structure.
    freeze_at: int = 2
    # "auto": FrozenBN when pretrained weights are loaded, trainable BN from scratch; or force "bn"/"frozen_bn".
    norm: Literal["auto", "bn", "frozen_bn"] = "auto"
    # Bottleneck stride in the first 1x1 (MSRA caffe). None: whatever the weights need (False from scratch).
    stride_in_1x1: bool | None = None
    # Shortcut option of paper Table 3: "A" zero-pad, "B" projection on dimension change, "C" always projection.
    shortcut: Literal["A", "B", "C"] = "B"
    # Epsilon of the trunk's BatchNorm / FrozenBN (torchvision's COCO_V1 FPN detector runs with 0).
    norm_eps: float = 1e-5


@dataclass
class FPNConfig:
    # arch FPN only: width of every pyramid level (the lateral and output convolutions).
    out_channels: int = 256
    # "none": convolutions with bias (Detectron2, torchvision v1); "bn": with BatchNorm (torchvision v2).
    norm: Literal["none", "bn"] = "none"


@dataclass
class PixelConfig:
    # How raw RGB 0-255 pixels are normalized before the first convolution; it belongs to the weights. None:
    # whatever model.backbone.weights need (resolved when the model is first built and written back here).
    # Mean and std in 0-255 units, listed in channel_order (the order the network expects).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: Literal["RGB", "BGR"] | None = None


@dataclass
class AnchorConfig:
    # Anchor sizes: sqrt(area) in input pixels (paper: 128/256/512 for VOC, adds 64 for COCO). With several feature
    # levels (FPN: P2..P6) the list is shared evenly by the levels in order: (32, 64, 128, 256, 512) is one per level.
    sizes: tuple[float, ...] = (128.0, 256.0, 512.0)
    # Aspect ratios h / w.
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # Anchor centre offset in units of the stride (0.0: centres at k*stride, as torchvision / Detectron2).
    offset: float = 0.0
    # Cell-anchor layout, a property of trained RPN weights: "torchvision" (ratio-major, integer-rounded; ours
    # since the start) or "detectron2" (size-major, exact floats; models converted from Detectron2 use it).
    convention: Literal["torchvision", "detectron2"] = "torchvision"
    # Space each level's anchors by (padded image side // cells) per axis instead of the level's stride, as
    # torchvision's AnchorGenerator does: only P6 differs, when a padded side is an odd multiple of 32 (models
    # converted from torchvision set it).
    stride_from_padded_size: bool = False


@dataclass
class RPNConfig:
    # Anchors sampled per image for the RPN loss, and their positive fraction (Ren et al. 2015: 256, 0.5).
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # IoU >= fg is positive, < bg is negative (in between ignored); best anchor per gt is positive too.
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    # Proposal generation: top-k by objectness per image and feature level before NMS (FPN: 2000 / 1000 per level),
    # kept per image after NMS (FPN training: Detectron2 1000, torchvision 2000).
    pre_nms_topk_train: int = 12000
    post_nms_topk_train: int = 2000
    pre_nms_topk_test: int = 6000
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    # Proposals with a side shorter than this (input pixels) are dropped (torchvision 1e-3; Detectron2 0: only empty
    # boxes).
    min_box_size: float = 1e-3
    # 3x3 convolutions before the RPN's sibling 1x1s (torchvision's FPN v2: 2).
    head_convs: int = 1
    # Box regression loss: smooth L1 with this beta (0 = L1), and loss weight.
    smooth_l1_beta: float = 0.0
    loss_weight: float = 1.0


@dataclass
class RoIHeadConfig:
    # "roi_align" (default; better) or "roi_pool" (the paper's RoI pooling).
    pooler_type: Literal["roi_align", "roi_pool"] = "roi_align"
    # Pooled size on res4 before res5 (C4: 14 -> res5 stride 2 -> 7x7; DC5 / FPN: 7), and RoIAlign sampling ratio
    # (0: adaptive, Detectron2; torchvision: 2).
    pooler_resolution: int = 14
    sampling_ratio: int = 0
    # RoIAlign half-pixel alignment (Detectron2's ROIAlignV2; False reproduces torchvision's MultiScaleRoIAlign).
    aligned: bool = True
    # FPN: a RoI of sqrt(area) s is pooled from level floor(canonical_level + log2(s / canonical_box_size)), with
    # level_epsilon added inside the log (Detectron2: 1e-8) or, level_epsilon_in_log false, to the level
    # (torchvision: 1e-6); clamped to P2..P5.
    canonical_box_size: float = 224.0
    canonical_level: int = 4
    level_epsilon: float = 1e-8
    level_epsilon_in_log: bool = True
    # RoIs sampled per image for the head loss and their foreground fraction.
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    # IoU >= fg is foreground; [bg_lo, fg) is background.
    fg_iou_thresh: float = 0.5
    bg_iou_thresh_lo: float = 0.0
    # Box coding weights (dx, dy, dw, dh) of the head.
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 0.0
    # Inference: minimum score, per-class NMS IoU (paper VOC: 0.3), detections kept per image, and the smallest side
    # of a kept detection in input pixels (torchvision 1e-2, Detectron2 0: only empty boxes are dropped).
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    min_box_size: float = 1e-2
    # DC5 / FPN box head: num_conv 3x3 convolutions of conv_dim channels (conv_norm "bn": with BatchNorm), then
    # num_fc fc layers of fc_dim (Detectron2 and torchvision v1: 0 convs, 2 fc; torchvision v2: 4 convs + BN, 1 fc).
    fc_dim: int = 1024
    num_fc: int = 2
    num_conv: int = 0
    conv_dim: int = 256
    conv_norm: Literal["none", "bn"] = "none"


@dataclass
class ModelConfig:
    # "C4": RPN + RoI pooling on res4, res5 per RoI (paper). "DC5": dilated res5 on the image, 2-fc head.
    # "FPN": a feature pyramid P2..P6 on res2..res5, RPN on every level, RoIs pooled from P2..P5 by size, fc head.
    arch: Literal["C4", "DC5", "FPN"] = "C4"
    # Number of foreground classes K (VOC 20, COCO 80); background is label K.
    num_classes: int = 20
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    # A trained detector to start from ("none": ImageNet backbone weights only): one of ours or one converted by
    # tools/convert_weights.py. Its architecture fields (arch, backbone name / stride placement / shortcut, pixel
    # spec, anchors, pooler, fc width) replace this config's; every tensor whose name and shape fit is loaded,
    # and classifier / box-regressor rows are kept for the class names both lists share.
    weights: str = "none"
    # torch.compile the trunk and the per-RoI box head when the model is built (GPU speed; the first steps
    # compile). Checkpoint keys are unchanged (the modules compile in place), so state dicts load both ways.
    compile: bool = False


@dataclass
class DataConfig:
    # Datasets as typed on the command line (see datasets/README.md): a name ("voc07+12", "voc07-test"), a
    # description of a user's own set ("coco:ann.json:images/", "voc:folder[:split]", "yolo:data.yaml[:split]",
    # a mapping {format: coco, ann_file: ..., image_dir: ...}), or a list of those (concatenated).
    train: Any = "synthetic-train"
    test: Any = "synthetic-test"
    # The class list (label order) for VOC-style folders, whose XML has no list of its own; empty: the sorted
    # names found in the training set's XML (logged).
    classes: tuple[str, ...] = ()
    # Data root; None: $RESDET_DATA_ROOT or the repo's datasets/ folder.
    root: str | None = None
    # Training shorter side in pixels (one is chosen at random per image: multi-scale), long side cap.
    min_size_train: tuple[int, ...] = (600,)
    max_size_train: int = 1000
    min_size_test: int = 600
    max_size_test: int = 1000
    # Horizontal flip probability and optional photometric jitter in training.
    flip_prob: float = 0.5
    photometric: bool = False
    # Large-scale jitter in training (Ghiasi et al. 2021; Detectron2's new baselines, torchvision's references), 0:
    # off. N: instead of the min_size_train resize, each image is scaled to fit an N x N canvas times a factor drawn
    # uniformly from lsj_scale, cropped at a random place to at most N x N and padded to it (grey 128).
    lsj_size: int = 0
    lsj_scale: tuple[float, float] = (0.1, 2.0)
    # An albumentations pipeline applied in training after the resize and flip, boxes following the pixels: a list
    # of {name: <albumentations transform>, <its arguments>}, e.g. [{name: RandomBrightnessContrast, p: 0.2}].
    # Boxes pushed out of the image or below 1 px are dropped and counted; names and arguments are checked at start.
    augment: tuple[Any, ...] = ()
    # Train on VOC boxes marked difficult (the paper does not).
    use_difficult: bool = False
    # Drop training images that have no usable box.
    filter_empty: bool = True
    # Unreadable images / annotations: false stops with an error naming the file; true skips and counts them
    # (training substitutes another image, evaluation scores a black image so its objects count as missed).
    skip_bad: bool = False
    # Data loader worker processes per training process, and aspect-ratio grouped batching.
    num_workers: int = 2
    aspect_grouping: bool = True
    # Repeat-factor sampling for rare classes (Gupta et al., LVIS 2019; Detectron2's RepeatFactorTrainingSampler),
    # 0: off. With threshold t an epoch holds each training image r = max over its classes c of max(1, sqrt(t / f_c))
    # times on average (f_c: the fraction of training images holding c), rounded stochastically per epoch from
    # (seed, epoch). LVIS uses 0.001; on a small own set, about the image fraction below which a class should be
    # drawn more often (e.g. 0.1). tools/check_dataset.py --repeat-factor-threshold T shows the factors.
    repeat_factor_threshold: float = 0.0


@dataclass
class SolverConfig(BaseSolverConfig):
    """The shared solver fields (:class:`resbackbone.engine.schedule.SolverConfig`: batch, lr, schedule,
    warm-up, clipping, precision, linear scaling, checkpoints) plus the per-device micro-batch and an
    epoch-based schedule."""

    # Images one forward / backward pass holds per process (GPU or CPU): ims_per_batch is reached by gradient
    # accumulation, ims_per_batch = processes x accumulation x ims_per_device, with the losses normalized over
    # the whole batch (exact with frozen BN; trainable BN sees micro-batch statistics). Smaller than the
    # per-process share: that share in one pass.
    ims_per_device: int = 2
    # lr decay after the warm-up: "multistep" (x gamma at each of steps) or "cosine" (to 0 at max_iter; steps
    # unused).
    schedule: Literal["multistep", "cosine"] = "multistep"
    # Epoch-based schedule (0: use max_iter / steps as written). max_iter = ceil(max_epochs x training images /
    # ims_per_batch), lr steps at step_fractions of it, e.g. [0.75]; resolved once the training set is known.
    max_epochs: float = 0.0
    step_fractions: tuple[float, ...] = ()
    # With max_epochs: also write a checkpoint every this many epochs and at every evaluation (0: only every
    # checkpoint_period), so a small set whose whole run is shorter than checkpoint_period still gets them.
    checkpoint_epochs: float = 1.0
    # Exponential moving average of the weights after every optimizer step (0: off; e.g. 0.999), with the decay
    # ramped up as ema_decay * (1 - exp(-step / ema_ramp_iters)) (timm / ultralytics; 0: no ramp) so the average
    # is not dominated by the random init early on. Evaluation, model_best.pth and model_final.pth use the averaged
    # weights; checkpoints hold both. The averaged window is about 1 / (1 - ema_decay) steps: keep it well under
    # max_iter (ultralytics: 0.9999 with a ramp of 2000 on runs of ~10^5 steps).
    ema_decay: float = 0.0
    ema_ramp_iters: int = 2000


@dataclass
class TestConfig:
    # Evaluate every N iterations during training (0: only at the end); each evaluation that improves the mAP
    # writes model_best.pth.
    eval_period: int = 0
    # With solver.max_epochs: evaluate every this many epochs instead (0: use eval_period).
    eval_epochs: float = 0.0
    # "voc07", "voc", "coco", or None to choose from the test dataset.
    metric: Literal["voc07", "voc", "coco"] | None = None
    # Images per batch at evaluation (per process).
    ims_per_batch: int = 4
    # Also compute the training loss terms on the test set at every evaluation ("val_loss" in metrics.jsonl,
    # the trackers and the log): no gradients, BatchNorm in eval mode, the RPN / RoI sampling from a fixed seed in
    # a forked RNG, so no state of the run changes.
    val_loss: bool = False
    # What model_best.pth and early stopping follow: "mAP" (the metric's headline number, as always: AP@0.5 with
    # the VOC metrics and on the synthetic set, AP@[.5:.95] with the COCO metric), "AP50" (AP@0.5 with any
    # metric), "AP" or "AP50:95" (AP averaged over IoU 0.50:0.95), or "val_loss" (lower is better; computes it).
    best_metric: Literal["mAP", "AP50", "AP", "AP50:95", "val_loss"] = "mAP"
    # Early stopping: stop after this many periodic evaluations in a row without a better best_metric (0: off;
    # needs eval_period or eval_epochs). The stop is logged, recorded in metrics.jsonl and the checkpoint, and a
    # --resume of the stopped run does nothing.
    patience: int = 0


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    # Where checkpoints, logs, metrics and the resolved config go.
    output_dir: str = "output/det"
    # Seed for model init, sampling and data order.
    seed: int = 0
    # Experiment trackers (through accelerate) that get every logged number and the resolved config: tensorboard
    # (output_dir/tensorboard), wandb, mlflow, comet_ml, clearml, aim, dvclive; [] for metrics.jsonl alone. Only
    # tensorboard is a dependency: the others need their pip package.
    log_with: tuple[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "aim", "dvclive"], ...] = (
        "tensorboard",)


def load_detection_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DetectionConfig:
    """Defaults <- YAML ``path`` (one ``base:`` level) <- ``key=value`` overrides, strictly checked."""
    return load_config(DetectionConfig, path, overrides)
