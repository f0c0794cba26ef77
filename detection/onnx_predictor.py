"""The detector exported by tools/export_onnx.py, run by onnxruntime without PyTorch.

Imports numpy, OpenCV and onnxruntime only (and the torch-free :mod:`detection.images`, :mod:`detection.results`,
:mod:`resbackbone.errors`): a deployment needs neither torch nor torchvision, and tools/infer.py on an ``.onnx`` file
never loads them. :class:`OnnxPredictor` does what :class:`detection.predictor.Predictor` does without TTA: decode
(OpenCV -> RGB), the model's test resize (the same :func:`detection.images.resize_image`), one image per run of the
graph, boxes scaled back to original pixels and clipped (as ``FasterRCNN.rescale``, in float32), the score filter.

The graph (``tools/export_onnx.py``): input ``image`` float32 ``(1, 3, H, W)`` RGB 0-255, any H x W (the graph
normalizes and pads to the size divisibility itself); outputs ``boxes (D, 4)`` XYXY pixels of that input,
``scores (D,)``, ``labels (D,)`` int64 in ``[0, K)``. What a runtime needs besides is in the file's
``metadata_props``, one JSON value per key (:class:`OnnxMetadata`).

Shape shorthand: H0 x W0 original image, H x W resized image, D detections, K foreground classes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from resbackbone.errors import CheckpointError, CheckpointNotFoundError, ConfigError, DataError

from .images import decode_image, load_rgb, resize_image, test_size

# metadata_props "format": what wrote the file; readers refuse other formats and newer versions.
ONNX_FORMAT = "resnet-det/faster-rcnn-onnx"
ONNX_FORMAT_VERSION = 1
# The graph's input and output names.
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")


def is_onnx_file(path: str | Path) -> bool:
    """An ``.onnx`` path selects the onnxruntime backend in the tools."""
    return Path(path).suffix.lower() == ".onnx"


@dataclass(frozen=True)
class OnnxMetadata:
    """What the exported file records besides its graph, one ``metadata_props`` entry per field, its value JSON.

    The pixel spec is informational (the graph normalizes: callers feed raw RGB 0-255); the test size, the score
    threshold for output files and the dataset ids are what a runtime applies around the graph.
    """

    class_names: list[str]  # the K foreground classes; label k is class_names[k] (background K is never output)
    min_size: int  # test resize: shorter side, input pixels
    max_size: int  # test resize: cap on the longer side
    pixel: dict[str, Any]  # {"mean": [3], "std": [3] (0-255 units, in channel_order), "channel_order": "RGB"/"BGR"}
    size_divisibility: int  # the graph zero-pads (after normalizing) each side to a multiple of this
    score_thresh: float  # the graph's own: detections scoring <= it are not output
    nms_thresh: float  # per-class NMS IoU inside the graph
    detections_per_image: int  # the graph outputs at most this many
    arch: str  # "C4", "DC5" or "FPN"
    # (H, W) the graph was traced for when it takes only that size (``--size``); None: any size (dynamic axes).
    fixed_size: tuple[int, int] | None = None
    # The ids of the data the model was trained on, as the checkpoint records them (see
    # detection.checkpoint.dataset_meta): "category_ids" (label -> the dataset's category id), "image_ids".
    dataset: dict[str, Any] = field(default_factory=dict)
    test_dataset: str = ""  # the dataset the training config tests on (tools/eval_det.py's default)
    source: str = ""  # the checkpoint file it was exported from (its name)

    def to_props(self) -> dict[str, str]:
        """``metadata_props``: the format stamp plus every field, each a JSON string."""
        props = {"format": json.dumps({"name": ONNX_FORMAT, "version": ONNX_FORMAT_VERSION})}
        for key, value in asdict(self).items():
            props[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
        props["input"] = json.dumps({"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW RGB 0-255",
                                     "shape": [1, 3, *(self.fixed_size or ("height", "width"))]})
        props["outputs"] = json.dumps({"boxes": "(D, 4) float32 XYXY pixels of the input", "scores": "(D,) float32",
                                       "labels": "(D,) int64 in [0, K)"})
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], path: str | Path = "the ONNX file") -> OnnxMetadata:
        """Read :meth:`to_props` back; a :class:`CheckpointError` naming the file for anything else."""
        try:
            stamp = json.loads(props["format"])
        except (KeyError, ValueError):
            raise CheckpointError(f"{path}: not a detector exported by tools/export_onnx.py (no 'format' in its "
                                  "metadata_props; a backbone-only or foreign ONNX file?)") from None
        if stamp.get("name") != ONNX_FORMAT or int(stamp.get("version", 0)) > ONNX_FORMAT_VERSION:
            raise CheckpointError(f"{path}: format {stamp} is not {ONNX_FORMAT} version <= {ONNX_FORMAT_VERSION}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in props:
                try:
                    values[f.name] = json.loads(props[f.name])
                except ValueError:
                    raise CheckpointError(f"{path}: metadata_props[{f.name!r}] is not JSON") from None
        missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise CheckpointError(f"{path}: metadata_props lacks {missing}")
        if values.get("fixed_size") is not None:
            values["fixed_size"] = tuple(int(v) for v in values["fixed_size"])
        return cls(**values)


def read_metadata(path: str | Path) -> OnnxMetadata:
    """The :class:`OnnxMetadata` of an exported file (read with onnxruntime; the graph is not run)."""
    return OnnxMetadata.from_props(_session(path, None, None).get_modelmeta().custom_metadata_map, path)


def _session(path: str | Path, threads: int | None, providers: Sequence[str] | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running an .onnx detector needs onnxruntime: pip install -e '.[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # onnxruntime's own types (InvalidProtobuf, Fail, ...) say what is wrong with the file
        raise CheckpointError(f"{path}: onnxruntime cannot load it: {str(e).splitlines()[0][:300]}") from None


def rescale_boxes(boxes: np.ndarray, size: tuple[int, int], orig_size: tuple[int, int]) -> np.ndarray:
    """``(D, 4)`` XYXY boxes of the resized ``(H, W)`` input -> original ``(H0, W0)`` pixels, clipped.

    float32 throughout, the same products as ``FasterRCNN.rescale`` (a float32 box times the factor rounded to
    float32), so both runtimes give the same numbers for the same model outputs.
    """
    (h, w), (h0, w0) = size, orig_size
    sx, sy = np.float32(w0 / w), np.float32(h0 / h)
    b = boxes.astype(np.float32, copy=False)
    zero, fw, fh = np.float32(0), np.float32(w0), np.float32(h0)
    return np.stack((np.clip(b[:, 0] * sx, zero, fw), np.clip(b[:, 1] * sy, zero, fh),
                     np.clip(b[:, 2] * sx, zero, fw), np.clip(b[:, 3] * sy, zero, fh)), axis=1)


def run_graph(session: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """An exported graph (an onnxruntime session) on one resized ``(H, W, 3)`` uint8 RGB image: all of the graph's
    detections (no score filter) in that image's pixels, ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)  # (H, W, 3) -> (1, 3, H, W)
    boxes, scores, labels = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    return {"boxes": boxes.reshape(-1, 4), "scores": scores.reshape(-1), "labels": labels.reshape(-1)}


class OnnxPredictor:
    """An exported detector ready for images on onnxruntime: ``predictor([image, ...])`` -> per-image detections
    in original pixels, as numpy arrays. The same interface as :class:`detection.predictor.Predictor` (``class_names``,
    ``min_size``, ``max_size``, ``dataset_meta``, ``predict_files``), without TTA.

    Args:
        path: the ``.onnx`` file tools/export_onnx.py wrote (dynamic height and width).
        score_thresh: detections scoring below it are dropped from the output (the graph's own threshold,
            ``metadata.score_thresh``, applies first).
        min_size, max_size: the test resize; None: the exported model's own (metadata).
        threads: onnxruntime intra-op threads; None: its default (one per physical core).
        providers: onnxruntime execution providers; None: the CPU.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        score_thresh: float = 0.0,
        min_size: int | None = None,
        max_size: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.session = _session(path, threads, providers)
        self.metadata = OnnxMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, path)
        if self.metadata.fixed_size is not None:
            h, w = self.metadata.fixed_size
            raise CheckpointError(f"{path}: exported for {h} x {w} inputs only (--size); export it without --size "
                                  "for a graph that takes every image at its own test size")
        self.min_size, self.max_size = test_size(self.metadata.min_size, self.metadata.max_size, min_size, max_size)
        self.class_names = list(self.metadata.class_names)
        self.score_thresh = float(score_thresh)
        self.device = "onnxruntime " + ",".join(self.session.get_providers())
        self.settings = "float32 (onnxruntime)"

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """The training data's ids the export recorded (``category_ids``, ``image_ids``), {} if none."""
        return dict(self.metadata.dataset)

    # A path (decoded with OpenCV, converted to RGB) or an (H0, W0, 3) uint8 RGB array, unchanged.
    load_image = staticmethod(load_rgb)

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The graph on one already resized image (:func:`run_graph`)."""
        return run_graph(self.session, image)

    def __call__(self, images: Sequence[str | Path | np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Per image ``{"boxes" (D, 4) float32 XYXY original pixels, "scores" (D,) float32, "labels" (D,) int64
        in [0, K)}``, by descending score."""
        results = []
        for source in images:
            original = self.load_image(source)
            resized = resize_image(original, self.min_size, self.max_size)
            det = self.run(resized)
            boxes = rescale_boxes(det["boxes"], resized.shape[:2], original.shape[:2])
            keep = det["scores"] >= self.score_thresh
            results.append({"boxes": boxes[keep], "scores": det["scores"][keep].astype(np.float32),
                            "labels": det["labels"][keep].astype(np.int64)})
        return results

    def predict_files(
        self, paths: Iterable[str | Path], batch_size: int = 1, *, skipped: list[tuple[Path, str]] | None = None
    ) -> Iterator[tuple[Path, np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(path, RGB image, detections)`` for each file. ``batch_size`` is accepted for the Predictor's
        interface; the graph runs one image at a time (its batch axis is 1, see docs/inference-and-export.md).

        ``skipped``: None stops at the first file that cannot be decoded (a :class:`DataError` naming it); a list
        collects ``(path, reason)`` of such files instead and the others are still predicted.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for p in paths:
            try:
                image = decode_image(p)
            except DataError as e:
                if skipped is None:
                    raise
                skipped.append((Path(p), str(e)))
                continue
            yield Path(p), image, self([image])[0]


@dataclass
class DetectionMatch:
    """How two runs' detections of one image compare (:func:`match_detections`)."""

    matched: int  # detection pairs of the same class within the tolerances
    max_box_diff: float  # largest |coordinate difference| over the pairs, pixels
    max_score_diff: float
    unmatched: list[str]  # detections without a partner that no cut-off explains, described

    @property
    def ok(self) -> bool:
        return not self.unmatched


def match_detections(
    got: Mapping[str, Any], ref: Mapping[str, Any], *, box_tol: float, score_tol: float, score_thresh: float,
    max_detections: int,
) -> DetectionMatch:
    """Pair each detection of ``ref`` with one of ``got`` (same class, box within ``box_tol`` px, score within
    ``score_tol``), best scores first.

    A detection may lack a partner only where rounding can decide whether it exists at all: its score within
    ``score_tol`` of ``score_thresh`` (the graph's threshold), or of the other run's lowest score when that run
    returned ``max_detections`` (the per-image cap cut it). Every other one is listed in ``unmatched``.

    Args:
        got, ref: ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}`` arrays (numpy or anything ``np.asarray``
            takes), one image each.
    """
    g = {k: np.asarray(got[k], dtype=np.float64) for k in OUTPUT_NAMES}
    r = {k: np.asarray(ref[k], dtype=np.float64) for k in OUTPUT_NAMES}
    g["boxes"], r["boxes"] = g["boxes"].reshape(-1, 4), r["boxes"].reshape(-1, 4)
    free = np.ones(len(g["scores"]), dtype=bool)
    box_diff = score_diff = 0.0
    matched = 0
    unmatched: list[str] = []

    def explained(score: float, other: dict[str, np.ndarray]) -> bool:
        at_cap = len(other["scores"]) >= max_detections and score <= other["scores"].min() + score_tol
        return abs(score - score_thresh) <= score_tol or at_cap

    for i in np.argsort(-r["scores"], kind="stable"):
        b, s, c = r["boxes"][i], r["scores"][i], r["labels"][i]
        err = np.abs(g["boxes"] - b).max(axis=1) if len(g["boxes"]) else np.zeros(0)
        fit = free & (g["labels"] == c) & (np.abs(g["scores"] - s) <= score_tol) & (err <= box_tol)
        if fit.any():
            j = int(np.flatnonzero(fit)[np.argmin(err[fit])])
            free[j] = False
            matched += 1
            box_diff, score_diff = max(box_diff, float(err[j])), max(score_diff, float(abs(g["scores"][j] - s)))
        elif not explained(float(s), g):
            unmatched.append(f"reference class {int(c)} score {s:.5f} box {np.round(b, 2).tolist()}")
    for j in np.flatnonzero(free):
        if not explained(float(g["scores"][j]), r):
            unmatched.append(f"extra class {int(g['labels'][j])} score {g['scores'][j]:.5f} box "
                             f"{np.round(g['boxes'][j], 2).tolist()}")
    return DetectionMatch(matched, box_diff, score_diff, unmatched)


__all__ = [
    "DetectionMatch",
    "INPUT_NAME",
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "OUTPUT_NAMES",
    "OnnxMetadata",
    "OnnxPredictor",
    "is_onnx_file",
    "match_detections",
    "read_metadata",
    "rescale_boxes",
    "run_graph",
]
