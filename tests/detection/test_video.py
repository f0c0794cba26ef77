"""detection.video: batching frames with --every (no model: a recording stand-in), the reader / writer round trip
and their errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from detection.video import FALLBACK_FPS, Frame, VideoReader, VideoWriter, is_video, predict_frames
from resbackbone.errors import DataError, DataNotFoundError, OutputError


class Recorder:
    """A predictor stand-in: each frame's "detection" is one box whose x1 is the frame's first pixel value (the
    frame's index, as :func:`frames` draws them); the batches it was called with are recorded."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Tensor]]:
        self.calls.append([int(im[0, 0, 0]) for im in images])
        return [{"boxes": torch.tensor([[float(im[0, 0, 0]), 0.0, 1.0, 1.0]]), "scores": torch.ones(1),
                 "labels": torch.zeros(1, dtype=torch.int64)} for im in images]


def frames(n: int) -> list[Frame]:
    return [Frame(index=i, time=i / 10, image=np.full((4, 6, 3), i, np.uint8)) for i in range(n)]


@pytest.mark.parametrize(("n", "batch_size", "every"), [(20, 1, 1), (20, 4, 1), (20, 4, 2), (19, 3, 3), (5, 8, 2),
                                                        (7, 2, 10)])
def test_every_frame_comes_out_in_order_with_the_last_processed_detections(n: int, batch_size: int,
                                                                           every: int) -> None:
    rec = Recorder()
    out = list(predict_frames(rec, frames(n), batch_size=batch_size, every=every))
    assert [f.index for f, _, _ in out] == list(range(n))
    assert [p for _, _, p in out] == [i % every == 0 for i in range(n)]
    for f, det, _ in out:
        # frame i shows the detections of frame i - i % every, the last processed one
        assert det["boxes"][0, 0].item() == f.index - f.index % every
    # The processed frames, each once, in batches of batch_size (the last may be smaller).
    processed = list(range(0, n, every))
    assert [i for call in rec.calls for i in call] == processed
    assert all(len(c) == batch_size for c in rec.calls[:-1]) and 1 <= len(rec.calls[-1]) <= batch_size
    with pytest.raises(ValueError, match=">= 1"):
        list(predict_frames(rec, frames(2), every=0))


def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, width=64, height=48) as writer:
        for i in range(20):
            writer.write(np.full((48, 64, 3), (10 * i, 255 - 10 * i, 128), np.uint8))
        with pytest.raises(ValueError, match="does not fit"):
            writer.write(np.zeros((48, 60, 3), np.uint8))  # OpenCV would silently drop it
    assert writer.frames_written == 20
    reader = VideoReader(path)
    assert (reader.info.width, reader.info.height, reader.info.fps) == (64, 48, 10.0)
    got = list(reader.frames())
    assert [f.index for f in got] == list(range(20))
    assert [f.time for f in got] == pytest.approx([i / 10 for i in range(20)])
    # RGB order survives (lossy codec: colours within a few levels)
    assert np.abs(got[3].image[24, 32].astype(int) - [30, 225, 128]).max() <= 8
    assert len(list(VideoReader(path).frames(max_frames=7))) == 7
    assert VideoWriter(tmp_path / "x.mp4", fps=0, width=8, height=8).fps == FALLBACK_FPS
    assert is_video("a/B.MP4") and is_video("c.webm") and not is_video("d.jpg")


def test_reader_and_writer_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="missing.mp4"):
        VideoReader(tmp_path / "missing.mp4")
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(DataError, match="text.mp4"):
        VideoReader(tmp_path / "text.mp4")
    with pytest.raises(DataError, match="camera 99"):
        VideoReader(99)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="file"):
        VideoWriter(tmp_path / "file" / "out.mp4", fps=10, width=8, height=8)

