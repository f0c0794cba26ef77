"""Drawing detections on images and plotting precision / recall curves (for humans; nothing here is scored).

Conventions: images are (H, W, 3) uint8 RGB numpy arrays, boxes (D, 4) XYXY continuous pixels of that image.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Golden-ratio hue steps give neighbouring class indices clearly different colours for any K.
_GOLDEN = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for class ``label``."""
    r, g, b = colorsys.hsv_to_rgb((label * _GOLDEN) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _np(x: Any, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(shape)


def draw_detections(
    image: np.ndarray,
    boxes: Any,
    labels: Any,
    scores: Any,
    class_names: Sequence[str],
    score_thresh: float = 0.5,
    *,
    thickness: int = 2,
) -> np.ndarray:
    """Boxes with "name 0.93" captions, one colour per class, on a copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes: (D, 4) XYXY pixels of ``image``; labels (D,) in [0, K); scores (D,) (None draws no score, e.g. GT).
        class_names: the K names.
        score_thresh: detections scoring below it are not drawn.
    Returns:
        (H, W, 3) uint8 RGB; the input is not modified.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    out = np.ascontiguousarray(image.copy())
    boxes_np = _np(boxes, np.float64, (-1, 4))
    labels_np = _np(labels, np.int64, (-1,))
    scores_np = _np(scores, np.float64, (-1,)) if scores is not None else None
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    order = np.argsort(scores_np) if scores_np is not None else np.arange(len(boxes_np))  # best drawn last (on top)
    for i in order:
        if scores_np is not None and scores_np[i] < score_thresh:
            continue
        c = int(labels_np[i])
        if not 0 <= c < len(class_names):
            raise ValueError(f"label {c} outside [0, {len(class_names)}) for draw_detections")
        color = class_color(c)
        x1, y1, x2, y2 = (int(round(v)) for v in boxes_np[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = class_names[c] if scores_np is None else f"{class_names[c]} {scores_np[i]:.2f}"
        (tw, th), base = cv2.getTextSize(text, font, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + 2  # caption inside the box at the top edge
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base - 1), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_pr_curves(
    pr_data: Mapping[str, Mapping[str, Sequence[float]]],
    path_png: str | Path,
    *,
    per_class: bool = True,
    title: str | None = None,
) -> Path:
    """Plot precision over recall per class (``VOCEvaluator.pr_curves()`` output) to a PNG.

    Args:
        pr_data: {class name: {"recall": [...], "precision": [...]}} in detection order.
        per_class: one subplot per class (True) or all curves in one axes with a legend.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    names = list(pr_data)
    if not names:
        raise ValueError("save_pr_curves: no classes to plot")
    if per_class:
        cols = min(5, len(names))
        rows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), squeeze=False)
        flat = axes.ravel()
        for ax in flat[len(names):]:
            ax.axis("off")
    else:
        fig, ax0 = plt.subplots(figsize=(7, 6))
        flat = [ax0] * len(names)
    for k, (ax, name) in enumerate(zip(flat, names)):
        rec = np.asarray(pr_data[name]["recall"], dtype=float)
        prec = np.asarray(pr_data[name]["precision"], dtype=float)
        color = tuple(v / 255 for v in class_color(k))
        ax.plot(rec, prec, color=color, label=name, linewidth=1.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if per_class:
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
    if not per_class:
        flat[0].set_xlabel("recall")
        flat[0].set_ylabel("precision")
        flat[0].legend(fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path_png)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_augmented_samples(dataset: Any, count: int, out_dir: str | Path, *, seed: int = 0) -> list[Path]:
    """What the model sees: ``count`` training items after resize and augmentation, their boxes and class names
    drawn, as ``augmented_<k>_<image id>.jpg`` in ``out_dir`` (Detectron2's visualize_data, ultralytics'
    train-batch images).

    ``dataset``: a training :class:`~detection.data.DetectionDataset` (its transform augments); the images are
    spread evenly over the set and each is augmented with a seed drawn from ``seed`` as training draws them.
    Returns the written paths.
    """
    import cv2

    from resbackbone.engine.sampling import sample_seed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = min(int(count), len(dataset))
    paths = []
    for k in range(n):
        index = k * len(dataset) // n
        image, target = dataset.get_item_seeded(index, sample_seed(seed, 0, k))
        drawn = draw_detections(image.permute(1, 2, 0).numpy(), target["boxes"], target["labels"], None,
                                dataset.class_names, thickness=1)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(target["image_id"]))
        path = out / f"augmented_{k:02d}_{safe}.jpg"
        if not cv2.imwrite(str(path), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths
