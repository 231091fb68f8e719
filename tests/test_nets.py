"""Tests of companion.nets: shapes, the Denoiser's preconditioning, labels, locality and padding."""
import pytest
import torch
from torch import nn

from companion import nets
from companion.denoisers import TARGETS, target_from_x0


pytestmark = pytest.mark.usefixtures("one_thread")


def _init_nonzero(model, seed=0):
    """Random weights everywhere (zero-initialised convolutions would hide dependencies)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("make", [lambda c: nets.UNet(channels=c, base=8),
                                  lambda c: nets.ResNet(channels=c, width=8, depth=2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_nets_shapes(size, make, channels):
    D = nets.Denoiser(make(channels))
    x = torch.randn(2, channels, size, size)
    out = D(x, torch.tensor([0.1, 3.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_mlp_and_classifier_shapes():
    D = nets.Denoiser(nets.MLP(dim=3, hidden=16, depth=2, n_classes=4), n_classes=4)
    assert D(torch.randn(5, 3), 0.5, torch.tensor([0, 1, 2, 3, 4])).shape == (5, 3)
    clf = nets.DigitsClassifier(width=8, features=12)
    x = torch.randn(4, 1, 8, 8)
    assert clf(x).shape == (4, 10) and clf.features(x).shape == (4, 12)


class _Oracle(nn.Module):
    """A 'network' that knows x0 and outputs the exact target, recovering x and σ from its inputs."""

    def __init__(self, x0, target, sigma_data):
        super().__init__()
        self.x0, self.target, self.sigma_data = x0, target, sigma_data

    def forward(self, x_in, c_noise, labels=None):
        sigma = torch.exp(4 * c_noise).double()
        x = x_in * torch.sqrt(sigma[:, None] ** 2 + self.sigma_data ** 2)
        return target_from_x0(self.x0, self.target, x, sigma, self.sigma_data)


@pytest.mark.parametrize("target", TARGETS)
def test_denoiser_is_exact_when_the_net_predicts_the_true_target(target):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, generator=g, dtype=torch.float64)
    sigma = torch.tensor([1e-3, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=torch.float64)
    x = x0 + sigma[:, None] * torch.randn(6, 4, generator=g, dtype=torch.float64)
    D = nets.Denoiser(_Oracle(x0, target, 0.7), target=target, sigma_data=0.7)
    torch.testing.assert_close(D(x, sigma), x0, rtol=1e-9, atol=1e-9)


def test_denoiser_preconditioning_of_the_raw_net_inputs():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x_in, c_noise, labels=None):
            seen.update(x_in=x_in, c_noise=c_noise)
            return torch.zeros_like(x_in)

    x = torch.randn(3, 2)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    out = nets.Denoiser(Spy(), target="v", sigma_data=0.5)(x, sigma)
    torch.testing.assert_close(seen["x_in"], x / torch.sqrt(sigma[:, None] ** 2 + 0.25))
    torch.testing.assert_close(seen["c_noise"], torch.log(sigma) / 4)
    torch.testing.assert_close(out, 0.25 / (sigma[:, None] ** 2 + 0.25) * x)  # v = 0 ⇒ D = c_skip x


@pytest.mark.parametrize("make", [lambda: nets.UNet(base=8, n_classes=10),
                                  lambda: nets.ResNet(width=8, depth=2, n_classes=10),
                                  lambda: nets.MLP(dim=64, hidden=16, n_classes=10)])
def test_labels_none_is_the_null_label(make):
    net = _init_nonzero(make())
    D = nets.Denoiser(net, n_classes=10)
    shape = (4, 64) if isinstance(net, nets.MLP) else (4, 1, 8, 8)
    x = torch.randn(shape)
    torch.testing.assert_close(D(x, 0.3), D(x, 0.3, torch.full((4,), 10)))
    assert not torch.allclose(D(x, 0.3), D(x, 0.3, torch.tensor([0, 1, 2, 3])))


def test_resnet_receptive_field():
    net = nets.ResNet(width=4, depth=3)
    assert net.receptive_field == 7
    _init_nonzero(net)
    x = torch.randn(1, 1, 16, 16)
    base = net(x, torch.zeros(1))[0, 0, 8, 8]
    r = net.receptive_field // 2
    for dy, inside in [(r, True), (r + 1, False)]:
        x2 = x.clone()
        x2[0, 0, 8 + dy, 8] += 1.0
        changed = not torch.allclose(net(x2, torch.zeros(1))[0, 0, 8, 8], base)
        assert changed == inside, (dy, inside)


def test_resnet_zero_padding_equivariant_inside_not_at_the_border():
    """Zero padding: translation equivariance in the interior, broken at the border (not circular)."""
    torch.manual_seed(0)
    net = _init_nonzero(nets.ResNet(width=4, depth=2))
    r = net.receptive_field // 2
    x = torch.randn(1, 1, 16, 16)
    c = torch.zeros(1)
    out, out_shift = net(x, c), net(torch.roll(x, 1, dims=-1), c)
    rolled = torch.roll(out, 1, dims=-1)
    # interior (away from the border and from the wrapped column): exactly equivariant
    torch.testing.assert_close(out_shift[..., r + 1:-r - 1], rolled[..., r + 1:-r - 1])
    # border: the wrapped column's neighbours see zeros, not the opposite side of the image
    assert not torch.allclose(out_shift[..., :, :r + 1], rolled[..., :, :r + 1])
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            assert m.padding_mode == "zeros"


def test_unet_zero_padding_sees_the_border():
    """A constant input is not mapped to a constant output: zero padding tells a pixel where the border is."""
    net = _init_nonzero(nets.UNet(base=8))
    out = net(torch.ones(1, 1, 16, 16), torch.zeros(1))
    assert out[0, 0, 8, 8] != out[0, 0, 0, 0]
    assert all(m.padding_mode == "zeros" for m in net.modules() if isinstance(m, nn.Conv2d))


def test_no_normalization_in_resnet():
    net = nets.ResNet(width=8, depth=3)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)) for m in net.modules())


@pytest.mark.parametrize("model", [
    nets.Denoiser(nets.UNet(base=8, mults=(1, 2), n_classes=3), target="eps", sigma_data=1.0, n_classes=3),
    nets.Denoiser(nets.ResNet(width=8, depth=2)),
    nets.Denoiser(nets.MLP(dim=2, hidden=8)),
    nets.DigitsClassifier(width=4, features=8),
])
def test_spec_build_round_trip(model):
    _init_nonzero(model)
    copy = nets.build(nets.spec(model))
    copy.load_state_dict(model.state_dict())
    if isinstance(model, nets.DigitsClassifier):
        x = torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(copy(x), model(x))
    else:
        x = torch.randn(2, 2) if isinstance(model.net, nets.MLP) else torch.randn(2, 1, 8, 8)
        torch.testing.assert_close(copy(x, 0.4), model(x, 0.4))
    assert nets.spec(copy) == nets.spec(model)


def test_finite_at_extreme_sigmas():
    D = nets.Denoiser(nets.UNet(base=8))
    x = torch.randn(2, 1, 8, 8)
    for s in (1e-4, 1e3):
        assert torch.isfinite(D(x, s)).all()


def test_bad_inputs():
    unet = nets.UNet(base=8)
    D = nets.Denoiser(unet)
    with pytest.raises(ValueError, match="target"):
        nets.Denoiser(unet, target="noise")
    with pytest.raises(ValueError, match="sigma_data"):
        nets.Denoiser(unet, sigma_data=0.0)
    with pytest.raises(ValueError, match="n_classes"):
        nets.Denoiser(unet, n_classes=10)  # the net is unconditional
    with pytest.raises(ValueError, match="labels"):
        D(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        D(torch.randn(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="divisible"):
        D(torch.randn(2, 1, 10, 10), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        D(torch.randn(2, 1, 8, 8), 0.0)
    Dc = nets.Denoiser(nets.UNet(base=8, n_classes=3), n_classes=3)
    with pytest.raises(ValueError, match="labels"):
        Dc(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels"):
        Dc(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="kernel"):
        nets.ResNet(kernel=2)
    with pytest.raises(ValueError, match="x must have shape"):
        nets.DigitsClassifier()(torch.randn(2, 1, 16, 16))
    with pytest.raises(TypeError):
        nets.spec(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="architecture"):
        nets.build({"class": "Transformer", "kwargs": {}})
