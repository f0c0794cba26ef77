"""Running a trained detector on images: the :class:`Predictor` (export wrappers live in :mod:`detection.export`).

``Predictor`` loads a checkpoint, decodes files with OpenCV (-> RGB), applies the model's own test resize, runs
batches on an automatically chosen device and returns detections in original-image pixels, optionally with the
paper's test-time improvements (:mod:`detection.tta`).

Shape shorthand: N images, H0 x W0 original size, H x W resized size, D detections, K foreground classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resbackbone.errors import ConfigError, DataError, DataNotFoundError

from .data.transforms import decode_image
from .tta import TTAOptions, predict_tta

# File name endings tools/infer.py treats as images when given a directory.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def choose_device(cpu: bool = False) -> torch.device:
    """CUDA when available (and not ``cpu``), then Apple MPS, else CPU."""
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    if not cpu and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def list_images(path: str | Path) -> list[Path]:
    """``path`` itself when it is a file, else the image files directly inside the directory, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataNotFoundError(f"--input {path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataNotFoundError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the directory")
    return files


def test_size(min_size: int, max_size: int, min_override: int | None, max_override: int | None) -> tuple[int, int]:
    """The test resize ``(shorter side, long-side cap)``: a model's own with the caller's overrides (None: keep).

    A cap below the shorter side is refused: the resize rule would then ignore ``min_size`` for every image.
    """
    new_min = int(min_override) if min_override is not None else int(min_size)
    new_max = int(max_override) if max_override is not None else int(max_size)
    if new_min < 1 or new_max < new_min:
        raise ConfigError(f"test size --min-size {new_min} --max-size {new_max}: need 1 <= min-size <= max-size")
    return new_min, new_max


class Predictor:
    """A detector ready for images: ``predictor([image, ...])`` -> per-image detections in original pixels.

    Args:
        model: a FasterRCNN (moved to ``device`` and put in eval mode).
        min_size, max_size: the test resize (shorter side, long-side cap), normally the training config's.
        score_thresh: detections scoring below it are dropped from the output (the model's own threshold still
            applies first).
        tta: test-time improvements (None / all off: the plain model).
        device: None chooses automatically (:func:`choose_device`).
        fuse_bn: run a copy of the model with BatchNorm folded into the convolutions
            (:func:`resbackbone.fold_batchnorm`; faster, equal up to float rounding); the caller's model is left as
            it is.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        min_size: int,
        max_size: int,
        score_thresh: float = 0.0,
        tta: TTAOptions | None = None,
        device: str | torch.device | None = None,
        fuse_bn: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else choose_device()
        self.model = model.to(self.device).eval()
        if fuse_bn:
            import copy

            from resbackbone.frozen_bn import fold_batchnorm

            self.model = copy.deepcopy(self.model)
            fold_batchnorm(self.model)
        self.class_names = list(model.class_names)
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.score_thresh = float(score_thresh)
        self.tta = tta or TTAOptions()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        score_thresh: float = 0.0,
        tta: TTAOptions | None = None,
        fuse_bn: bool = False,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> Predictor:
        """Rebuild the detector saved by tools/train_det.py (final weights or a training checkpoint), or converted
        by tools/convert_weights.py. ``min_size`` / ``max_size``: the test resize; None: the model's own."""
        from .checkpoint import load_detector

        dev = torch.device(device) if device is not None else choose_device()
        model, cfg, _ = load_detector(path, dev)
        min_size, max_size = test_size(cfg.data.min_size_test, cfg.data.max_size_test, min_size, max_size)
        return cls(model, min_size=min_size, max_size=max_size, score_thresh=score_thresh, tta=tta, device=dev,
                   fuse_bn=fuse_bn)

    @staticmethod
    def load_image(source: str | Path | np.ndarray) -> np.ndarray:
        """A path (decoded with OpenCV, converted to RGB) or an ``(H0, W0, 3)`` uint8 RGB array, unchanged."""
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                raise ValueError(f"images must be (H, W, 3) uint8 RGB arrays, got {source.shape} {source.dtype}")
            return source
        return decode_image(source)

    @torch.inference_mode()
    def __call__(self, images: Sequence[str | Path | np.ndarray]) -> list[dict[str, Tensor]]:
        """Detect on one batch. Returns per image ``{"boxes" (D, 4) float32 XYXY original pixels, "scores" (D,),
        "labels" (D,) int64 in [0, K)}`` on the CPU, by descending score."""
        arrays = [self.load_image(im) for im in images]
        if not arrays:
            return []
        outputs = predict_tta(self.model, arrays, self.tta, min_size=self.min_size, max_size=self.max_size)
        results = []
        for out in outputs:
            keep = out["scores"] >= self.score_thresh
            results.append({"boxes": out["boxes"][keep].float().cpu(), "scores": out["scores"][keep].float().cpu(),
                            "labels": out["labels"][keep].long().cpu()})
        return results

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 1, *, skipped: list[tuple[Path, str]] | None = None
    ) -> Iterator[tuple[Path, np.ndarray, dict[str, Tensor]]]:
        """Yield ``(path, RGB image, detections)`` for each file, running ``batch_size`` images at a time.

        ``skipped``: None stops at the first file that cannot be decoded (a :class:`DataError` naming it); a list
        collects ``(path, reason)`` of such files instead and the others are still predicted.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunk: list[tuple[Path, np.ndarray]] = []
        for p in paths:
            try:
                image = decode_image(p)
            except DataError as e:
                if skipped is None:
                    raise
                skipped.append((Path(p), str(e)))
                continue
            chunk.append((Path(p), image))
            if len(chunk) == batch_size:
                yield from self._run_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[tuple[Path, np.ndarray]]) -> Iterator[tuple[Path, np.ndarray, dict[str, Tensor]]]:
        dets = self([im for _, im in chunk])
        for (p, im), d in zip(chunk, dets):
            yield p, im, d


def detections_to_json(det: dict[str, Tensor], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Detections -> ``[{"box": [x1, y1, x2, y2], "score", "label", "class_name"}]`` (plain Python, JSON-ready)."""
    return [
        # 4 decimals: well below a pixel, and enough to compare runs of two implementations exactly.
        {"box": [round(float(v), 4) for v in b], "score": round(float(s), 6), "label": int(c),
         "class_name": class_names[int(c)]}
        for b, s, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
    ]


__all__ = [
    "IMAGE_SUFFIXES",
    "Predictor",
    "choose_device",
    "detections_to_json",
    "list_images",
    "test_size",
]
