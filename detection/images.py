"""Image files and the detector's test-time resize, without torch: OpenCV decoding to RGB, the paper's
shorter-side rule, the file endings the tools treat as images.

Torch-free on purpose (numpy + OpenCV): the onnxruntime predictor (:mod:`detection.onnx_predictor`) and
tools/infer.py on an ``.onnx`` file run on it without loading torch; the data pipeline
(:mod:`detection.data.transforms`), the PyTorch :class:`~detection.predictor.Predictor` and TTA use the same
functions, so both runtimes see the same pixels.

Shape shorthand: H0 x W0 decoded image, H x W resized image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from resbackbone.errors import ConfigError, DataError

# The data pipeline's logger: a recovered file is reported under the same name wherever it is decoded.
logger = logging.getLogger("detection.data")

# File name endings tools/infer.py treats as images when given a directory.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> tuple[np.ndarray, bool]:
    """``(image (H, W, 3) uint8 RGB, recovered)``: ``recovered`` when only the tolerant path could decode it.

    ``cv2.imdecode`` refuses a JPEG cut short (an interrupted copy or download), which viewers and ``cv2.imread``
    show with the missing rows grey; such a file is decoded as they do (its boxes are still right). Both apply the
    EXIF orientation. A DataError naming the file when neither can read it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    recovered = False
    if image is None and data.size:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        recovered = image is not None
    if image is None:
        raise DataError(f"cannot decode image (corrupt or not an image): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), recovered


# The warning for a file decoded only as far as its data goes (training, the pre-training check, check_dataset).
RECOVERED_IMAGE = "{}: truncated or damaged image data, decoded as far as it goes (as image viewers do)"
# Files whose recovery was reported by this process (one warning per file, not one per epoch).
_reported_recovered: set[Path] = set()


def decode_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (see :func:`read_image`); a truncated file that could be
    recovered is reported once per process with its name; a clear error naming the file when it cannot be read."""
    image, recovered = read_image(path)
    if recovered and Path(path) not in _reported_recovered:
        _reported_recovered.add(Path(path))
        logger.warning(RECOVERED_IMAGE.format(path))
    return image


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The paper's rule (Ren et al. 2015): shorter side to ``min_size`` unless the longer side would exceed
    ``max_size``, in which case the longer side becomes ``max_size``."""
    short, long = min(height, width), max(height, width)
    scale = min_size / short
    if long * scale > max_size:
        scale = max_size / long
    return scale


def test_size(min_size: int, max_size: int, min_override: int | None, max_override: int | None) -> tuple[int, int]:
    """The test resize ``(shorter side, long-side cap)``: a model's own with the caller's overrides (None: keep).

    A cap below the shorter side is refused: the resize rule would then ignore ``min_size`` for every image.
    """
    new_min = int(min_override) if min_override is not None else int(min_size)
    new_max = int(max_override) if max_override is not None else int(max_size)
    if new_min < 1 or new_max < new_min:
        raise ConfigError(f"test size --min-size {new_min} --max-size {new_max}: need 1 <= min-size <= max-size")
    return new_min, new_max


def resize_image(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """The paper's resize: :func:`resize_scale`, sides rounded, one bilinear ``cv2.resize`` to the final size
    (albumentations' SmallestMaxSize + LongestMaxSize would interpolate twice when the long-side cap applies); an
    image whose sides already fit is returned as it is (no resampling round trip). The data pipeline, the test
    resize of both predictors and TTA all use it.

    ``image`` (H0, W0, 3) uint8 RGB -> (H, W, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    scale = resize_scale(h, w, min_size, max_size)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return image

def load_rgb(source: str | Path | np.ndarray) -> np.ndarray:
    """A path (decoded with OpenCV, converted to RGB) or an ``(H0, W0, 3)`` uint8 RGB array, unchanged."""
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ValueError(f"images must be (H, W, 3) uint8 RGB arrays, got {source.shape} {source.dtype}")
        return source
    return decode_image(source)


__all__ = ["IMAGE_SUFFIXES", "RECOVERED_IMAGE", "decode_image", "load_rgb", "read_image", "resize_image",
           "resize_scale", "test_size"]
