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

from resbackbone.errors import DataError, DataNotFoundError

# Decoding, the image suffixes, the test size and the JSON form of detections are torch-free (detection.images,
# detection.results), shared with the onnxruntime predictor; re-exported here where they were first defined.
from .images import IMAGE_SUFFIXES, decode_image, load_rgb, test_size
from .results import detections_to_json
from .tta import TTAOptions, predict_tta


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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX). Elsewhere oneDNN emulates
    bf16 autocast, many times slower than float32 (benchmarks/RESULTS.md), so it is never a default there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: torch's own view of the instruction set
        return "AMX" in torch.backends.cpu.get_cpu_capability().upper()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def optimize_for_inference(model: nn.Module, *, fuse_bn: bool = True, channels_last: bool = False) -> nn.Module:
    """A copy of an eval-mode detector made faster for inference; ``model`` itself is left as it is.

    ``fuse_bn``: every (frozen) BatchNorm folded into the convolution before it
    (:func:`resbackbone.frozen_bn.fold_batchnorm`): one multiply and add per channel fewer, equal up to float
    rounding. ``channels_last``: the convolution weights in NHWC order, so oneDNN / cuDNN run their NHWC kernels
    (a convolution's output follows its weight's memory format: the trunk's maps, and C4's res5 on the RoIAlign
    crops, whose first convolution reorders them once); the values are unchanged. Neither changes what the model
    computes beyond rounding (tests/detection/test_predictor.py bounds it). ``model`` itself is returned when both
    are off.
    """
    if not (fuse_bn or channels_last):
        return model
    import copy

    model = copy.deepcopy(model).eval()
    if fuse_bn:
        from resbackbone.frozen_bn import fold_batchnorm

        fold_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Predictor:
    """A detector ready for images: ``predictor([image, ...])`` -> per-image detections in original pixels.

    By default it runs the fast way (measured in benchmarks/RESULTS.md, "CPU inference and ONNX"): a copy of the
    model with BatchNorm folded into the convolutions and NHWC (channels_last) weights, both equal to the plain
    model up to float rounding; and, only on CPUs with bf16 instructions, bf16 autocast (an approximation: boxes
    move by up to ~1 px on a trained model; ``bf16=False`` or tools' ``--fp32`` turn it off). ``exact=True`` (tools'
    ``--exact``; the same as ``fuse_bn=False, channels_last=False, bf16=False``) runs the model exactly as given,
    for reference runs.

    Args:
        model: a FasterRCNN (moved to ``device`` and put in eval mode; never modified).
        min_size, max_size: the test resize (shorter side, long-side cap), normally the training config's.
        score_thresh: detections scoring below it are dropped from the output (the model's own threshold still
            applies first).
        tta: test-time improvements (None / all off: the plain model).
        device: None chooses automatically (:func:`choose_device`).
        fuse_bn: run a copy with BatchNorm folded into the convolutions (:func:`optimize_for_inference`).
        channels_last: NHWC convolution weights; None: on CPU and CUDA.
        bf16: bfloat16 autocast; None: on a CPU with bf16 instructions (:func:`cpu_has_bf16`), nowhere else.
        exact: all three off, whatever they say.
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
        fuse_bn: bool = True,
        channels_last: bool | None = None,
        bf16: bool | None = None,
        exact: bool = False,
    ) -> None:
        self.device = torch.device(device) if device is not None else choose_device()
        if exact:
            fuse_bn, channels_last, bf16 = False, False, False
        self.fuse_bn = bool(fuse_bn)
        self.channels_last = self.device.type in ("cpu", "cuda") if channels_last is None else bool(channels_last)
        self.bf16 = (self.device.type == "cpu" and cpu_has_bf16()) if bf16 is None else bool(bf16)
        if self.bf16 and self.device.type != "cpu":
            raise ValueError(f"bf16 autocast is a CPU option here, not for {self.device.type}")
        self.model = optimize_for_inference(model.to(self.device).eval(), fuse_bn=self.fuse_bn,
                                            channels_last=self.channels_last)
        self.class_names = list(model.class_names)
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.score_thresh = float(score_thresh)
        self.tta = tta or TTAOptions()

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """The ids of the data the model was trained on (``category_ids``, ``image_ids``; see
        :func:`detection.checkpoint.dataset_meta`), {} if the file records none."""
        return dict(getattr(self.model, "dataset_meta", {}))

    @property
    def settings(self) -> str:
        """``"float32, BN folded, channels_last"`` (what :meth:`__call__` runs), for logs."""
        parts = ["bf16 autocast" if self.bf16 else "float32"]
        parts += ["BN folded"] * self.fuse_bn + ["channels_last"] * self.channels_last
        return ", ".join(parts)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        score_thresh: float = 0.0,
        tta: TTAOptions | None = None,
        fuse_bn: bool = True,
        channels_last: bool | None = None,
        bf16: bool | None = None,
        exact: bool = False,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> Predictor:
        """Rebuild the detector saved by tools/train_det.py (final weights or a training checkpoint), or converted
        by tools/convert_weights.py. ``min_size`` / ``max_size``: the test resize; None: the model's own. The
        speed options as :class:`Predictor`'s."""
        from .checkpoint import load_detector

        dev = torch.device(device) if device is not None else choose_device()
        model, cfg, _ = load_detector(path, dev)
        min_size, max_size = test_size(cfg.data.min_size_test, cfg.data.max_size_test, min_size, max_size)
        return cls(model, min_size=min_size, max_size=max_size, score_thresh=score_thresh, tta=tta, device=dev,
                   fuse_bn=fuse_bn, channels_last=channels_last, bf16=bf16, exact=exact)

    # A path (decoded with OpenCV, converted to RGB) or an (H0, W0, 3) uint8 RGB array, unchanged.
    load_image = staticmethod(load_rgb)

    @torch.inference_mode()
    def __call__(self, images: Sequence[str | Path | np.ndarray]) -> list[dict[str, Tensor]]:
        """Detect on one batch. Returns per image ``{"boxes" (D, 4) float32 XYXY original pixels, "scores" (D,),
        "labels" (D,) int64 in [0, K)}`` on the CPU, by descending score."""
        arrays = [self.load_image(im) for im in images]
        if not arrays:
            return []
        # Under bf16 autocast, box decoding, NMS and RoIAlign still run in float32 (box_coder, torchvision's
        # autocast rules for its ops).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
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


__all__ = [
    "IMAGE_SUFFIXES",
    "Predictor",
    "choose_device",
    "cpu_has_bf16",
    "optimize_for_inference",
    "detections_to_json",
    "list_images",
    "test_size",
]
