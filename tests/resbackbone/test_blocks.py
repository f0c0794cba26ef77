"""The single-output-position fast path of :class:`resbackbone.blocks.Conv2d` equals ``F.conv2d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resbackbone.blocks import Conv2d, conv1x1, conv3x3


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [
        ((1, 1), 3, 1, 1, 1),  # res5 after a 2x2 pooler: only the centre tap reads the input
        ((2, 2), 3, 2, 1, 1),  # res5's first block on 2x2 RoIs: four taps
        ((2, 2), 1, 2, 0, 1),  # its projection shortcut
        ((1, 1), 3, 1, 2, 2),  # dilated (DC5-style) on a 1x1 map
        ((3, 4), 3, 2, 0, 1),  # non-square input, no padding: the last column is not read
        ((2, 2), 3, 1, 1, 1),  # 2x2 output: the ordinary convolution
    ],
)
def test_conv2d_equals_functional_conv(size: tuple[int, int], kernel: int, stride: int, padding: int,
                                       dilation: int) -> None:
    torch.manual_seed(0)
    conv = Conv2d(6, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=True)
    x = torch.randn(4, 6, *size, requires_grad=True)
    y = conv(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(ref_x, conv.weight, conv.bias, stride, padding, dilation)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # Gradients too: the head trains through this path.
    grad = torch.randn_like(ref)
    (gx, gw, gb) = torch.autograd.grad(y, (x, conv.weight, conv.bias), grad)
    (rx, rw, rb) = torch.autograd.grad(ref, (ref_x, conv.weight, conv.bias), grad)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-5)


def test_conv_helpers_keep_the_torch_state_dict() -> None:
    # Converted torchvision / timm weights map one to one: same parameter names and shapes as nn.Conv2d.
    for conv in (conv3x3(8, 16, stride=2), conv1x1(8, 16)):
        ref = torch.nn.Conv2d(8, 16, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=False)
        assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
        assert isinstance(conv, torch.nn.Conv2d)
