"""Video in and out for the detector: frames of a file or a camera as RGB arrays, batched predictions per frame,
an annotated video written back.

Any file OpenCV's FFmpeg backend decodes is read (recognized by :data:`VIDEO_SUFFIXES` where a tool has to tell
videos from images); the annotated copy is written as MPEG-4 Part 2 (``mp4v``), which every OpenCV build writes
without extra codecs, at the source's frame rate and size.

Frame times: for a file ``index / fps`` (the container's nominal rate: the time of the frame in a constant-rate
video, which is what players seek to); for a camera the seconds since the capture opened, as frames arrive.

Shape shorthand: H x W frame size, D detections.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import torch
from torch import Tensor

from resbackbone.errors import DataError, DataNotFoundError, OutputError

# File name endings treated as videos (everything else given to tools/infer.py is an image).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
# The written video's codec: MPEG-4 Part 2 in an .mp4 container, available in every OpenCV build (H.264 needs
# an encoder OpenCV's wheels do not ship).
VIDEO_FOURCC = "mp4v"
# Frame rate written when the source reports none (some cameras and streams report 0).
FALLBACK_FPS = 30.0


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what native code (FFmpeg, OpenCV's logger) writes to file descriptor 2 inside the block; the list
    holds its lines once the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines.extend(line for line in held.read().decode(errors="replace").splitlines() if line.strip())


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file by its ending (:data:`VIDEO_SUFFIXES`, any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What the source reports about itself."""

    fps: float  # frames per second; 0 when the source does not say
    width: int
    height: int
    frame_count: int  # -1 when unknown (cameras, some containers); a hint, the decoded count can differ


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    index: int  # 0-based position in the source
    time: float  # seconds from the start (see the module docstring)
    image: np.ndarray  # (H, W, 3) uint8 RGB


class VideoReader:
    """The frames of a video file or camera, in order: ``for frame in reader.frames(): ...``.

    Args:
        source: a video file, or an int camera index (``cv2.VideoCapture(index)``).
    Raises:
        DataNotFoundError: the file does not exist. DataError: OpenCV cannot open it (not a video, unknown codec,
        no such camera).
    """

    def __init__(self, source: str | Path | int) -> None:
        self.source = source
        self.is_camera = isinstance(source, int)
        if self.is_camera:
            self.name = f"camera {source}"
        else:
            self.name = str(source)
            if not Path(source).is_file():
                raise DataNotFoundError(f"{source}: no such video file")
        # FFmpeg and OpenCV's logger print their own lines about a source they cannot open; held back here, the
        # error below says it in one line (with FFmpeg's reason for a file).
        with captured_stderr() as messages:
            self._capture = cv2.VideoCapture(int(source) if self.is_camera else str(source))
            opened = self._capture.isOpened()
        if not opened:
            self._capture.release()
            if self.is_camera:
                raise DataError(f"{self.name}: cannot be opened (no such camera, or another program uses it)")
            reason = re.sub(r"^(\[[^]]*\]\s*)+", "", messages[-1]).strip() if messages else ""
            raise DataError(f"{self.name}: OpenCV cannot open it as a video (not a video, or a codec this OpenCV "
                            f"build lacks){f'; FFmpeg: {reason}' if reason else ''}")
        cap = self._capture
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.info = VideoInfo(fps=max(0.0, float(cap.get(cv2.CAP_PROP_FPS) or 0.0)),
                              width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              frame_count=count if count > 0 and not self.is_camera else -1)

    def frames(self, max_frames: int | None = None) -> Iterator[Frame]:
        """Yield the frames as RGB until the source ends (or ``max_frames`` were read); the capture is released
        at the end. A frame that fails to decode ends a file, as OpenCV cannot tell that from its end."""
        start = time.monotonic()
        index = 0
        try:
            while max_frames is None or index < max_frames:
                ok, bgr = self._capture.read()
                if not ok or bgr is None:
                    break
                if self.is_camera or self.info.fps <= 0:
                    t = time.monotonic() - start
                else:
                    t = index / self.info.fps
                if bgr.ndim == 2:  # grey sources
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield Frame(index=index, time=t, image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class VideoWriter:
    """Writes RGB frames of one size to a video file (:data:`VIDEO_FOURCC`), e.g. ``out.mp4``.

    Args:
        path: the file (its folder is created).
        fps: frames per second (<= 0: :data:`FALLBACK_FPS`).
        width, height: the frame size; every frame must have it.
        fourcc: the codec's four characters.
    Raises:
        OutputError: OpenCV cannot open the file for writing (folder not writable, codec missing).
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, fourcc: str = VIDEO_FOURCC) -> None:
        self.path = Path(path)
        self.size = (int(width), int(height))
        self.fps = float(fps) if fps > 0 else FALLBACK_FPS
        self.frames_written = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {self.path.parent}: {e.strerror or e}") from e
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.size)
        if not self._writer.isOpened():
            raise OutputError(f"cannot write the video {self.path} (codec {fourcc}, {self.size[0]}x{self.size[1]})")

    def write(self, image: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` uint8 RGB frame of the writer's size."""
        if image.shape[:2] != (self.size[1], self.size[0]) or image.dtype != np.uint8:
            # OpenCV would drop a frame of another size silently, leaving a shorter video.
            raise ValueError(f"frame {image.shape} {image.dtype} does not fit the video's "
                             f"{self.size[1]}x{self.size[0]} uint8")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        self._writer.release()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def empty_detections() -> dict[str, Tensor]:
    """No detections, in the Predictor's format."""
    return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}


def predict_frames(
    predict: Callable[[Sequence[np.ndarray]], list[dict[str, Tensor]]],
    frames: Iterable[Frame],
    *,
    batch_size: int = 1,
    every: int = 1,
) -> Iterator[tuple[Frame, dict[str, Tensor], bool]]:
    """Detections for a stream of frames, ``batch_size`` processed frames per call of ``predict``.

    Args:
        predict: a Predictor or TiledPredictor: list of ``(H, W, 3)`` uint8 RGB -> per image ``{"boxes" (D, 4),
            "scores" (D,), "labels" (D,)}``.
        frames: in order (:meth:`VideoReader.frames`).
        batch_size: processed frames per call.
        every: process frames whose index is a multiple of ``every`` (frame 0 always).
    Yields:
        every frame, in order, as ``(frame, detections, processed)``: a frame that is not processed comes with the
        detections of the last processed frame before it (what a viewer of the annotated video should see), with
        ``processed`` False. Frames wait until their batch is run: at most ``batch_size * every`` are held.
    """
    if batch_size < 1 or every < 1:
        raise ValueError(f"batch_size and every must be >= 1, got {batch_size}, {every}")
    pending: list[Frame] = []  # frames read but not yet yielded
    todo = 0  # processed frames among them
    last = empty_detections()
    for frame in itertools.chain(frames, [None]):  # None: the end of the stream, run what is left
        # A full batch runs when the next processed frame arrives: the frames after its last processed one (not
        # processed themselves) show that frame's detections, and are then all read.
        processed = frame is not None and frame.index % every == 0
        if pending and (frame is None or (processed and todo == batch_size)):
            chosen = [f for f in pending if f.index % every == 0]
            dets = predict([f.image for f in chosen]) if chosen else []
            if len(dets) != len(chosen):
                raise RuntimeError(f"the predictor returned {len(dets)} results for {len(chosen)} frames")
            by_index = {f.index: d for f, d in zip(chosen, dets)}
            for f in pending:
                last = by_index.get(f.index, last)
                yield f, last, f.index in by_index
            pending, todo = [], 0
        if frame is not None:
            pending.append(frame)
            todo += processed


__all__ = [
    "FALLBACK_FPS",
    "Frame",
    "VIDEO_FOURCC",
    "VIDEO_SUFFIXES",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "empty_detections",
    "is_video",
    "predict_frames",
]
