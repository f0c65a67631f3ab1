"""The exact fast formulation of one-output-channel convolutions (critics' score layer)."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from cryoet_forge.models.critics import SNWGANCritic
from cryoet_forge.models.fastconv import FewOutputConv3d, conv3d_split


@pytest.mark.parametrize("shape,out_channels,padding", [((2, 3, 9, 9, 9), 1, 1), ((1, 5, 7, 8, 6), 1, 0),
                                                         ((3, 2, 6, 6, 6), 1, 2)])
def test_split_convolution_equals_conv3d_values_and_gradients(shape, out_channels, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_channels, shape[1], 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(out_channels, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv3d(x, w, b, padding=padding)
    new = conv3d_split(x, w, b, padding)
    assert new.shape == ref.shape
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, c in zip(torch.autograd.grad(ref, (x, w, b), grad_out), torch.autograd.grad(new, (x, w, b), grad_out)):
        torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)


def test_split_convolution_supports_double_backward():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 6, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 4, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: conv3d_split(x, w, None, 1), (x, w))


def test_channels_last_and_bf16_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 10, 10, 10, generator=g).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(1, 4, 4, 4, 4, generator=g)
    torch.testing.assert_close(conv3d_split(x, w, None, 1), F.conv3d(x, w, padding=1), rtol=1e-5, atol=1e-4)
    low = conv3d_split(x.bfloat16(), w.bfloat16(), None, 1)
    assert low.dtype == torch.float32  # the 16 partial sums are accumulated in float32
    torch.testing.assert_close(low, F.conv3d(x, w, padding=1), rtol=0.05, atol=0.3)


def test_module_is_a_conv3d_with_the_same_state_dict_and_spectral_norm():
    torch.manual_seed(3)
    fast = spectral_norm(FewOutputConv3d(4, 1, 4, padding=1))
    plain = spectral_norm(torch.nn.Conv3d(4, 1, 4, padding=1))
    plain.load_state_dict(fast.state_dict())
    assert set(plain.state_dict()) == set(fast.state_dict())
    x = torch.randn(2, 4, 8, 8, 8)
    fast.eval(), plain.eval()  # no power iteration: both see the same normalised weight
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def test_split_is_used_only_where_it_applies():
    conv = FewOutputConv3d(4, 1, 4, padding=1)
    assert conv._split_applies(torch.zeros(1, 4, 8, 8, 8))
    assert not FewOutputConv3d(4, 2, 4, padding=1)._split_applies(torch.zeros(1, 4, 8, 8, 8))  # 32 channels
    assert not FewOutputConv3d(4, 1, 4, stride=2, padding=1)._split_applies(torch.zeros(1, 4, 8, 8, 8))
    assert not FewOutputConv3d(4, 1, 4, padding=1, padding_mode="reflect")._split_applies(torch.zeros(1, 4, 8, 8, 8))


def test_critic_scores_equal_the_plain_convolution():
    torch.manual_seed(4)
    critic = SNWGANCritic(base=4).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    last = critic.net[-1]
    with torch.no_grad():
        fast = critic(x)
        assert last._split_applies(torch.zeros(1, 16, 13, 13, 13))
        last._split_applies = lambda _x: False  # the plain nn.Conv3d path
        plain = critic(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
