"""Plain helpers shared by the test modules (the fixtures are in conftest.py): repository paths, the tiny detector
settings, generated VOC trees, test images, BN statistics, MSRA-layout blobs."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from detection.config import ModelConfig
from detection.data import VOC_CLASSES
from resbackbone.engine.sampling import TrainBatchSampler
from resbackbone.weights import reference_shapes

REPO = Path(__file__).resolve().parents[1]
# Real data samples next to the checkout (see shared/data/README.md); tests that need them skip without them.
SHARED_DATA = REPO / ".." / "shared" / "data"

# -------------------------------------------------------------------------------------------- numerical claims

# What "the same detections" means when two float32 computations of one model are compared (another library, a
# fused or exported copy, another batch): float32 rounding of a convolution stack differs between instruction sets
# (oneDNN and ATen pick other kernels on AVX2, AVX-512 / AMX and the scalar fallback) and its effect on a decoded
# box grows with the box's size, so boxes are compared to a hundredth of a pixel (Detectron2 re-run on another
# machine moved its own boxes by up to 1.1e-3 px) and scores / logits to 1e-4. A real difference (another anchor,
# a missed offset, a class swap) is orders of magnitude larger.
BOX_TOL_PX = 1e-2
SCORE_TOL = 1e-4


def assert_same_detections(got: dict[str, Any], ref: dict[str, Any], what: str, *, box_tol: float = BOX_TOL_PX,
                           score_tol: float = SCORE_TOL) -> None:
    """Matched sets: every reference detection has its own detection of the same class, box within ``box_tol``
    px and score within ``score_tol``, and the counts are equal. Two detections whose scores tie within rounding
    may come out in either order, so the order is not compared.

    Args:
        got, ref: ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` tensors, arrays or lists.
    """
    boxes, scores, labels = (torch.as_tensor(np.asarray(got[k]), dtype=torch.float64) for k in ("boxes", "scores",
                                                                                                "labels"))
    ref_boxes, ref_scores, ref_labels = (torch.as_tensor(np.asarray(ref[k]), dtype=torch.float64)
                                         for k in ("boxes", "scores", "labels"))
    assert len(boxes) == len(ref_boxes), f"{what}: {len(boxes)} detections, reference {len(ref_boxes)}"
    free = torch.ones(len(boxes), dtype=torch.bool)
    for b, s, c in zip(ref_boxes.reshape(-1, 4), ref_scores, ref_labels):
        fit = free & (labels == c) & ((scores - s).abs() <= score_tol)
        fit &= (boxes.reshape(-1, 4) - b).abs().amax(1) <= box_tol
        assert fit.any(), f"{what}: no match for the reference's class {int(c)} score {float(s):.5f} box {b.tolist()}"
        free[fit.nonzero()[0, 0]] = False

# ----------------------------------------------------------------------------------------------- tiny detectors

# The shared tiny ResNet-18 C4 detector (fixtures tiny_detector / tiny_checkpoint): the synthetic set's classes.
TINY_CLASSES = ["circle", "rectangle", "triangle"]
TINY_DETECTOR = [
    "model.backbone.name=resnet18",
    "model.num_classes=3",
    "model.anchors.sizes=[16,32,64]",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=12",
    # res5 runs once per RoI: a small pooled size keeps the C4 head cheap on CPU.
    "model.roi_heads.pooler_resolution=8",
    "data.min_size_test=64",
    "data.max_size_test=96",
]

# The FPN twin of TINY_DETECTOR (fixtures tiny_fpn_detector / tiny_fpn_checkpoint): one anchor size per level.
TINY_FPN_DETECTOR = [
    *TINY_DETECTOR,
    "model.arch=FPN",
    "model.anchors.sizes=[16,32,64,128,256]",
    "model.roi_heads.pooler_resolution=7",
    "model.roi_heads.fc_dim=64",
]

# A CPU-sized C4 model and solver for training runs: seconds per run.
TINY_TRAINING = [
    "model.backbone.name=resnet18",
    "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=50",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=20",
    "model.roi_heads.batch_size_per_image=16",
    "data.min_size_train=[64]",
    "data.max_size_train=96",
    "data.min_size_test=64",
    "data.max_size_test=96",
    "solver.ims_per_batch=2",
    "solver.warmup_iters=2",
    "test.ims_per_batch=8",
]


def tiny_config(arch: str = "C4", *, freeze_at: int = 0, name: str = "resnet18") -> ModelConfig:
    """A CPU-sized detector (C4, DC5 or FPN): 64-128 px images, small anchors, 7x7 pooling, few RoIs."""
    cfg = ModelConfig(arch=arch, num_classes=3)
    cfg.backbone.name = name
    cfg.backbone.freeze_at = freeze_at
    # FPN: one size per level P2..P6.
    cfg.anchors.sizes = (16.0, 32.0, 64.0, 128.0, 256.0) if arch == "FPN" else (16.0, 32.0, 64.0)
    cfg.rpn.post_nms_topk_train = 64
    cfg.rpn.pre_nms_topk_test = 200
    cfg.rpn.post_nms_topk_test = 16
    cfg.roi_heads.pooler_resolution = 7
    cfg.roi_heads.batch_size_per_image = 16
    cfg.roi_heads.fc_dim = 64
    return cfg


def subprocess_env(data_root: Path) -> dict[str, str]:
    """The environment of a tool run in a subprocess: the data root, one thread, the checkout importable."""
    env = dict(os.environ)
    env["RESDET_DATA_ROOT"] = str(data_root)
    env["OMP_NUM_THREADS"] = "1"  # bit-identical comparisons need the same reduction order in every run
    env["PYTHONPATH"] = str(REPO)
    return env


# ------------------------------------------------------------------------------------------------------ images


def noise_image(h: int, w: int, seed: int) -> np.ndarray:
    """Random noise with a few bright rectangles, (H, W, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    im = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        im[y : y + int(rng.integers(10, 20)), x : x + int(rng.integers(10, 20))] = rng.integers(150, 255, 3)
    return im


def probe_images(h: int, w: int) -> list[torch.Tensor]:
    """Two test images unlike the tracing input: noise with bright rectangles, and a smooth gradient."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 120, (3, h, w)).astype(np.float32)
    a[:, 10:40, 20:60] = 230.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    b = np.stack([xx / w * 255, yy / h * 255, np.full_like(xx, 128.0)])
    return [torch.from_numpy(a), torch.from_numpy(b)]


def random_boxes(n: int, size: float = 128.0, seed: int = 0) -> torch.Tensor:
    """``n`` random XYXY boxes inside a ``size`` x ``size`` image, at least 2 px on each side."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.5 + 2.0
    return torch.cat([xy, xy + wh], dim=1)


def take_batches(sampler: TrainBatchSampler, n: int) -> list[list[int]]:
    """The first ``n`` batches of ``sampler``."""
    return list(itertools.islice(iter(sampler), n))


# ----------------------------------------------------------------------------------------------------- VOC trees


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    """An annotation file as the devkit writes it (1-based inclusive bndbox, folder/filename/source/size)."""
    objs = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>{difficult}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
        f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for name, (x1, y1, x2, y2), difficult in objects
    )
    return (
        f"<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        f"\t<segmented>0</segmented>\n{objs}</annotation>\n"
    )


def write_voc_year(
    root: Path, year: str, images: dict[str, tuple[int, int, list]], splits: dict[str, list[str]],
    *, filename_for: dict[str, str] | None = None,
) -> Path:
    """``<root>/VOCdevkit/VOC<year>/{Annotations, JPEGImages, ImageSets/Main}`` with small random JPEGs.

    ``images``: image id -> (width, height, [(class name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)]).
    """
    year_dir = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(year))
    for image_id, (w, h, objects) in images.items():
        cv2.imwrite(str(year_dir / "JPEGImages" / f"{image_id}.jpg"), rng.integers(0, 256, (h, w, 3), np.uint8))
        fname = (filename_for or {}).get(image_id, f"{image_id}.jpg")
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(voc_xml(fname, w, h, objects))
    for split, ids in splits.items():
        (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return year_dir


# (image id, width, height, [(class, xmin, ymin, xmax, ymax) 1-based inclusive, difficult])
VOC_IMAGES = [
    ("000001", 96, 80, [("dog", 10, 12, 50, 60, False), ("person", 55, 5, 90, 75, False)]),
    ("000004", 64, 64, [("dog", 5, 5, 40, 40, False), ("cat", 30, 30, 60, 60, True)]),
    ("000007", 80, 72, [("car", 1, 1, 30, 20, False), ("car", 40, 40, 79, 70, False)]),
    ("000010", 72, 72, []),
]


def write_voc_tree(root: Path) -> Path:
    """A VOC2007 test split of the :data:`VOC_IMAGES` in the official devkit layout (the fixture voc07_test_root)."""
    images = {image_id: (w, h, [(c, (x1, y1, x2, y2), int(d)) for c, x1, y1, x2, y2, d in objects])
              for image_id, w, h, objects in VOC_IMAGES}
    write_voc_year(root, "2007", images, {"test": [i[0] for i in VOC_IMAGES]})
    return root


def near_hit_detections(dataset: Any) -> list[dict[str, np.ndarray]]:
    """Per image: each GT box shifted a little (a near-hit), its copy as a lower-scoring duplicate, and a miss."""
    out = []
    for i in range(len(dataset)):
        g = dataset.get_ground_truth(i)
        boxes = np.concatenate([g["boxes"] + 2.0, g["boxes"] + 1.0, np.array([[0.0, 0.0, 8.0, 8.0]])])
        n = len(g["boxes"])
        scores = np.concatenate([np.linspace(0.9, 0.6, n), np.linspace(0.5, 0.3, n), [0.95]])
        labels = np.concatenate([g["labels"], g["labels"], [VOC_CLASSES.index("car")]])
        out.append({"boxes": boxes, "scores": scores, "labels": labels.astype(np.int64)})
    return out


# pycocotools' numbers for the fake results on the real COCO val2014 sample (shared/data/coco).
COCO_REFERENCE = dict(AP=0.503647, AP50=0.696973, AP75=0.571667, APs=0.593252, APm=0.557991, APl=0.489363,
                      AR1=0.386813, AR10=0.593680, AR100=0.595353, ARs=0.654764, ARm=0.603130, ARl=0.553744)

# ----------------------------------------------------------------------------------------------------- backbones


def randomize_bn_statistics(model: nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics, so that a wrong formula or a mis-mapped or lost
    buffer changes the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.25, 4.0)


def msra_blobs(depth: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A Detectron-style blob dict with known random arrays, and the values our keys must receive."""
    rng = np.random.default_rng(depth)
    ref = reference_shapes(depth, stride_in_1x1=True)  # every key and shape of our ResNet-depth
    blobs: dict[str, np.ndarray] = {}
    expect: dict[str, np.ndarray] = {}

    def put(blob: str, ours: str) -> None:
        arr = rng.standard_normal(ref[ours], dtype=np.float32)
        blobs[blob] = arr
        expect[ours] = arr

    put("conv1_w", "stem.conv1.weight")
    put("res_conv1_bn_s", "stem.bn1.weight")
    put("res_conv1_bn_b", "stem.bn1.bias")
    for key in ref:
        parts = key.split(".")
        if not key.startswith("res") or parts[-1] not in ("weight", "bias"):
            continue
        stage, block, layer = parts[0][3:], parts[1], ".".join(parts[2:-1])
        branch = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "downsample.0": "1",
                  "bn1": "2a_bn", "bn2": "2b_bn", "bn3": "2c_bn", "downsample.1": "1_bn"}[layer]
        if branch.endswith("_bn"):
            put(f"res{stage}_{block}_branch{branch[:-3]}_bn_{'s' if parts[-1] == 'weight' else 'b'}", key)
        else:
            put(f"res{stage}_{block}_branch{branch}_w", key)
    put("fc1000_w", "fc.weight")
    put("fc1000_b", "fc.bias")
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)  # optimizer leftovers are ignored
    return blobs, expect
