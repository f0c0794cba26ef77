"""Pretrained-weight conversion and loading: torchvision / timm parity, MSRA pickles, safety, offline message."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from resbackbone import resnet50, resnet101
from resbackbone.pixels import MSRA_PIXELS, TORCHVISION_PIXELS
from resbackbone.resnet import ResNet
from resbackbone.weights import (
    WeightsError,
    WeightsNotFoundError,
    check_state_dict,
    convert_state_dict,
    load_pretrained,
    pretrained_state_dict,
    safe_load_pickle,
    save_backbone_weights,
)


def _features(model: ResNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = model.forward_features(x)
    feats.pop("_last")
    return feats


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_conversion_gives_identical_logits_and_features(depth: int) -> None:
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")().eval()
    # Non-trivial BN statistics so that a mis-mapped buffer would show.
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = ResNet(depth).eval()
    state = convert_state_dict(tv.state_dict(), "torchvision")
    check_state_dict(state, depth)
    ours.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max() < 1e-4
        feats = ResNet(depth, out_features=("res4", "res5")).eval()
        feats.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        f = _features(feats, x)
        tv_res4 = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        assert (f["res4"] - tv_res4).abs().max() < 1e-4
        assert (f["res5"] - tv.layer4(tv_res4)).abs().max() < 1e-4


def test_timm_conversion_gives_identical_logits() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    tm = timm.create_model("resnet50", pretrained=False).eval()
    ours = resnet50().eval()
    ours.load_state_dict(convert_state_dict(tm.state_dict(), "timm"), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tm(x)).abs().max() < 1e-4


def _msra_blobs(depth: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A Detectron-style blob dict with known random arrays, and the values our keys must receive."""
    rng = np.random.default_rng(depth)
    ref = ResNet(depth, stride_in_1x1=True).state_dict()
    blobs: dict[str, np.ndarray] = {}
    expect: dict[str, np.ndarray] = {}

    def put(blob: str, ours: str) -> None:
        arr = rng.standard_normal(tuple(ref[ours].shape)).astype(np.float32)
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


def test_msra_pickle_loads_to_the_right_parameters(tmp_path: Path) -> None:
    blobs, expect = _msra_blobs(50)
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    state, info = pretrained_state_dict(str(path), 50)
    assert info.stride_in_1x1 and info.pixel_spec == MSRA_PIXELS and info.source == "msra"
    for k, v in expect.items():
        assert np.array_equal(state[k].numpy(), v), k
    model = ResNet(50, stride_in_1x1=True, norm="frozen_bn")
    load_pretrained(model, str(path))
    assert torch.equal(model.res3[0].conv1.weight, torch.from_numpy(expect["res3.0.conv1.weight"]))
    # caffe BN is an affine map: FrozenBN must reproduce scale * x + bias exactly.
    bn = model.stem.bn1
    x = torch.randn(1, 64, 4, 4)
    want = x * torch.from_numpy(expect["stem.bn1.weight"])[None, :, None, None] + torch.from_numpy(
        expect["stem.bn1.bias"])[None, :, None, None]
    assert torch.allclose(bn(x), want, atol=1e-5)
    assert model.pixel_norm is not None
    with pytest.raises(WeightsError, match="stride_in_1x1"):
        load_pretrained(ResNet(50), str(path))


def test_malicious_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Evil()}}))
    with pytest.raises(WeightsError, match="refusing to unpickle global"):
        safe_load_pickle(path)
    with pytest.raises(WeightsError):
        pretrained_state_dict(str(path), 50)
    assert not marker.exists()


def test_strict_conversion_names_bad_keys() -> None:
    tv = torchvision.models.resnet50().state_dict()
    tv["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="extra.weight"):
        convert_state_dict(tv, "torchvision")
    state = convert_state_dict(torchvision.models.resnet50().state_dict(), "torchvision")
    del state["res3.1.conv2.weight"]
    with pytest.raises(WeightsError, match=r"res3\.1\.conv2\.weight"):
        check_state_dict(state, 50)
    with pytest.raises(WeightsError, match=r"unexpected .*res4\.10"):
        check_state_dict(convert_state_dict(torchvision.models.resnet101().state_dict(), "torchvision"), 50)
    state = convert_state_dict(torchvision.models.resnet50().state_dict(), "torchvision")
    state["res2.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError, match=r"shape mismatch.*res2\.0\.conv1\.weight"):
        check_state_dict(state, 50)


def test_offline_named_weights_give_one_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("RESDET_OFFLINE", "0")

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlretrieve", no_network)
    with pytest.raises(WeightsNotFoundError) as err:
        pretrained_state_dict("torchvision", 101)
    msg = str(err.value)
    assert "https://download.pytorch.org/models/resnet101" in msg and str(tmp_path) in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(WeightsNotFoundError, match="R-152.pkl"):
        pretrained_state_dict("msra", 152)


def test_native_round_trip_and_named_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = resnet101(num_classes=10)
    path = tmp_path / "backbone_weights.pth"
    save_backbone_weights(model, path, depth=101, pixel_spec=TORCHVISION_PIXELS)
    target = ResNet(101, out_features=("res4",))
    info = load_pretrained(target, str(path))
    assert info.source == "resbackbone" and info.pixel_spec == TORCHVISION_PIXELS
    assert torch.equal(target.res4[22].conv3.weight, model.res4[22].conv3.weight)
    with pytest.raises(WeightsError, match="ResNet-101"):
        pretrained_state_dict(str(path), 50)


def test_convert_weights_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    blobs, expect = _msra_blobs(50)
    src = tmp_path / "R-50.pkl"
    src.write_bytes(pickle.dumps(blobs, protocol=2))
    out = tmp_path / "r50.pth"
    tool = Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py"
    res = subprocess.run([sys.executable, str(tool), "--weights", str(src), "--depth", "50", "--output", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    state, info = pretrained_state_dict(str(out), 50)
    assert info.stride_in_1x1 and info.pixel_spec == MSRA_PIXELS
    assert np.array_equal(state["res5.2.conv3.weight"].numpy(), expect["res5.2.conv3.weight"])
    bad = subprocess.run([sys.executable, str(tool), "--weights", str(tmp_path / "nope.pth"), "--depth", "50",
                          "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope.pth" in bad.stderr and "Traceback" not in bad.stderr
