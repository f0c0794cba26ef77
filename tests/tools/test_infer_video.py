"""tools/infer.py on a video through its main(argv), on the shared tiny ResNet-18 C4 detector checkpoint: the
annotated video and detections.jsonl round-trip against the Predictor run on the decoded frames; --every; errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detection.predictor import Predictor
from tests.helpers import TINY_CLASSES, assert_same_detections, noise_image
from tools import infer

# JSON rounds boxes to 4 decimals and scores to 6.
JSON_BOX_TOL = 1e-3
JSON_SCORE_TOL = 1e-5


def write_clip(folder: Path, num_frames: int = 20, fps: float = 10.0) -> Path:
    """A ``num_frames`` clip of 96 x 64 noise frames with a bright square moving across: mp4v in .mp4, or MJPG in
    .avi where this OpenCV cannot write mp4v."""
    for name, fourcc in (("clip.mp4", "mp4v"), ("clip.avi", "MJPG")):
        path = folder / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (96, 64))
        if writer.isOpened():
            break
    else:
        pytest.skip("this OpenCV build writes neither mp4v nor MJPG")
    for i in range(num_frames):
        frame = noise_image(64, 96, i)
        frame[20:40, 3 * i : 3 * i + 20] = (230, 200, 40)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB, as OpenCV decodes it."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def as_tensors(dets: list[dict]) -> dict[str, np.ndarray]:
    return {"boxes": np.array([d["box"] for d in dets], np.float64).reshape(-1, 4),
            "scores": np.array([d["score"] for d in dets]), "labels": np.array([d["label"] for d in dets])}


def test_video_round_trip_and_every_second_frame(tmp_path: Path, tiny_checkpoint: Path, one_thread: None) -> None:
    clip = write_clip(tmp_path)
    frames = decode(clip)
    assert len(frames) == 20
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", score_thresh=0.2)
    for every in (1, 2):
        out = tmp_path / f"every{every}"
        assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(clip), "--output", str(out),
                           "--score-thresh", "0.2", "--batch-size", "4", "--every", str(every), "--cpu"]) == 0
        # The annotated video: every input frame (also with --every 2: unprocessed frames show the last
        # detections), same size and rate.
        written = out / "clip.mp4"
        drawn = decode(written)
        assert len(drawn) == len(frames) and drawn[0].shape == frames[0].shape
        cap = cv2.VideoCapture(str(written))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        cap.release()
        lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
        processed = list(range(0, 20, every))
        assert [r["frame"] for r in lines] == processed
        assert [r["time"] for r in lines] == pytest.approx([i / 10 for i in processed])
        assert all((r["height"], r["width"]) == (64, 96) for r in lines)
        # Each frame's detections are the Predictor's on that decoded frame (in the tool's batches of 4).
        reference = []
        for start in range(0, len(processed), 4):
            reference += predictor([frames[i] for i in processed[start : start + 4]])
        assert sum(len(r["detections"]) for r in lines) > 0, "the random detector finds something >= 0.2"
        for r, ref in zip(lines, reference):
            assert all(d["class_name"] == TINY_CLASSES[d["label"]] and d["category_id"] == d["label"] + 1
                       for d in r["detections"])
            assert_same_detections(as_tensors(r["detections"]), ref, f"frame {r['frame']}", box_tol=JSON_BOX_TOL,
                                   score_tol=JSON_SCORE_TOL)
    # --max-frames stops early; --no-draw writes the JSON lines only.
    out = tmp_path / "short"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(clip), "--output", str(out),
                       "--max-frames", "5", "--no-draw", "--cpu"]) == 0
    assert len((out / "detections.jsonl").read_text().splitlines()) == 5 and not (out / "clip.mp4").exists()


def test_video_with_tiles(tmp_path: Path, tiny_checkpoint: Path, one_thread: None) -> None:
    """Tiling applies to frames as to images: each JSON line gives the tiles a frame took."""
    clip = write_clip(tmp_path, num_frames=3)
    out = tmp_path / "out"
    assert infer.main(["--checkpoint", str(tiny_checkpoint), "--input", str(clip), "--output", str(out),
                       "--tile", "64", "--batch-size", "3", "--no-draw", "--cpu"]) == 0
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    # 96 x 64 in 64 px tiles, stride 48: x at 0 and 32 (edge-aligned), y at 0 -> 2 tiles
    assert [r["tiles"] for r in lines] == [2, 2, 2]


def test_video_errors_are_one_line(tmp_path: Path, tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """An unreadable video, a missing camera, a video among other inputs, --every 0, --every on images: one line
    ``infer: error: ...`` (OpenCV's and FFmpeg's own messages silenced) and exit status 2."""
    (tmp_path / "broken.mp4").write_text("not a video")
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), noise_image(32, 32, 0))
    cases = [
        (["--input", str(tmp_path / "broken.mp4")], "broken.mp4"),
        (["--camera", "99"], "camera 99"),
        (["--input", str(tmp_path / "broken.mp4"), str(image)], "a video is processed alone"),
        (["--input", str(tmp_path / "broken.mp4"), "--every", "0"], "--every must be >= 1"),
        (["--input", str(image), "--every", "2"], "apply to a video"),
    ]
    for argv, what in cases:
        capfd.readouterr()
        assert infer.main(["--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "o"), "--cpu",
                           *argv]) == 2, argv
        err = capfd.readouterr().err
        assert err.startswith("infer: error: ") and what in err and err.count("\n") == 1, err
