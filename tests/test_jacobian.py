"""Tests of companion.jacobian: batched Jacobians, homogeneity, eigen-analysis, ideal Jacobians."""
import copy
import math

import pytest
import torch
from torch import nn

from companion import gmm, jacobian as jac, nets
from companion.denoisers import IdealDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _bf(seed=0, dtype=torch.float32, base=4, levels=2):
    torch.manual_seed(seed)
    net = nets.BiasFreeUNet(1, base, levels, 2)
    net.train()
    with torch.no_grad():  # a few batches give the norms non-trivial running statistics
        for _ in range(3):
            net(torch.rand(8, 1, 8, 8) * 3)
    return net.eval().to(dtype)


def _with_bias(net):
    """The same network with a random bias in its output convolution."""
    biased = copy.deepcopy(net)
    conv = biased.out
    biased.out = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True).to(conv.weight.dtype)
    with torch.no_grad():
        biased.out.weight.copy_(conv.weight)
        biased.out.bias.normal_(0, 0.1)
    return biased.eval()


def test_jacobian_equals_the_per_pixel_loop():
    net = _bf()
    y = torch.rand(3, 1, 8, 8)
    loop = jac.jacobian_loop(net, y)
    for chunk in (1, 7, 64, 500):
        torch.testing.assert_close(jac.jacobian(net, y, chunk_size=chunk), loop, rtol=1e-5, atol=1e-6)


def test_jacobian_with_sigma_and_a_net_with_biases():
    torch.manual_seed(0)
    D = nets.Denoiser(nets.ResNet(width=8, depth=2)).eval()
    y = torch.randn(2, 1, 4, 4)
    for sigma in (0.3, torch.tensor([0.2, 1.5])):
        torch.testing.assert_close(jac.jacobian(D, y, sigma, chunk_size=5), jac.jacobian_loop(D, y, sigma),
                                   rtol=1e-5, atol=1e-6)


def test_jacobian_matches_finite_differences():
    net = _bf(dtype=torch.float64)
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    J = jac.jacobian(net, y)
    v = torch.randn(2, 64, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (net(y + h * v.reshape(y.shape)) - net(y - h * v.reshape(y.shape))).reshape(2, -1) / (2 * h)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", J, v), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_bias_free_net_is_homogeneous_and_its_own_jacobian_times_input(scale):
    net = _bf(dtype=torch.float64)
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64) * scale
    with torch.no_grad():
        torch.testing.assert_close(net(3.0 * y), 3.0 * net(y), rtol=1e-10, atol=0)
    assert jac.homogeneity_error(net, y).max() < 1e-10


def test_homogeneity_fails_with_a_bias():
    biased = _with_bias(_bf(dtype=torch.float64))
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert jac.homogeneity_error(biased, y).min() > 1e-3


def test_eigen_reconstructs_the_symmetric_part_and_measures_asymmetry():
    torch.manual_seed(0)
    A = torch.randn(3, 6, 6, dtype=torch.float64)
    S = A + A.transpose(1, 2)
    e = jac.eigen(S)
    assert (e.values[:, 1:] <= e.values[:, :-1]).all()
    recon = e.vectors @ torch.diag_embed(e.values) @ e.vectors.transpose(1, 2)
    torch.testing.assert_close(recon, S)
    assert e.asymmetry.max() < 1e-14
    K = A - A.transpose(1, 2)  # antisymmetric: J = S + K has (J − Jᵀ)/2 = K, ‖J‖² = ‖S‖² + ‖K‖²
    e2 = jac.eigen(S + K)
    expected = K.flatten(1).norm(dim=1) / (S.flatten(1).norm(dim=1) ** 2 + K.flatten(1).norm(dim=1) ** 2).sqrt()
    torch.testing.assert_close(e2.asymmetry, expected)
    torch.testing.assert_close(e2.values, e.values)
    assert jac.eigen(K).asymmetry.min() == pytest.approx(1.0)  # purely antisymmetric: all of J dropped


def test_effective_dimension_of_a_projection():
    q, _ = torch.linalg.qr(torch.randn(10, 3, dtype=torch.float64))
    P = (q @ q.T)[None]
    e = jac.eigen(P)
    torch.testing.assert_close(jac.effective_dimension(e.values), torch.tensor([3.0], dtype=torch.float64))
    torch.testing.assert_close(e.values[0, :3], torch.ones(3, dtype=torch.float64))


def _brute_ideal_jacobian(data, y, sigma):
    """Cov[x|y]/σ² by an explicit sum over the data points (float64)."""
    out = []
    for yb in y:
        logits = torch.stack([-((yb - x) ** 2).sum() / (2 * sigma ** 2) for x in data])
        w = torch.exp(logits - logits.max())
        w = w / w.sum()
        m = sum(wi * x for wi, x in zip(w, data))
        out.append(sum(wi * torch.outer(x - m, x - m) for wi, x in zip(w, data)) / sigma ** 2)
    return torch.stack(out)


@pytest.mark.parametrize("sigma", [1e-4, 0.3, 2.0])
def test_ideal_jacobian_of_the_empirical_denoiser(sigma):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = data[:3] + sigma * torch.randn(3, 5, generator=g, dtype=torch.float64) + 0.1
    D = IdealDenoiser(data)
    J = jac.ideal_jacobian(D, y, sigma)
    assert torch.isfinite(J).all()
    torch.testing.assert_close(J, _brute_ideal_jacobian(data, y, sigma), rtol=1e-9, atol=1e-9)
    if sigma > 1e-3:  # and it is the derivative of the denoiser
        torch.testing.assert_close(J, jac.jacobian(D, y, sigma), rtol=1e-9, atol=1e-9)


def test_ideal_jacobian_of_a_mixture_is_its_derivative():
    mix = gmm.GaussianMixture(torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.1)
    y = torch.randn(5, 3, dtype=torch.float64)
    for sigma in (0.5, torch.rand(5, dtype=torch.float64) + 0.2):
        J = jac.ideal_jacobian(mix, y, sigma)
        torch.testing.assert_close(J, jac.jacobian(mix.denoise, y, sigma), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(J, J.transpose(1, 2))


def test_optimal_mse_is_sigma_squared_times_the_expected_trace():
    mix = gmm.ring()
    sigma, n = 1.0, 20000
    g = torch.Generator().manual_seed(0)
    x = mix.sample(n, generator=g)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    err = ((mix.denoise(y, sigma) - x) ** 2).sum(1)
    tr = jac.ideal_jacobian(mix, y, sigma).diagonal(dim1=1, dim2=2).sum(1) * sigma ** 2
    # both are unbiased estimates of the same number: their difference is within a few standard errors
    assert abs(err.mean() - tr.mean()) < 4 * (err - tr).std() / math.sqrt(n)


def test_runs_on_the_device_of_its_input():
    net = _bf().to("meta")
    J = jac.jacobian(net, torch.rand(1, 1, 8, 8, device="meta"), chunk_size=16)
    assert J.device.type == "meta" and J.shape == (1, 64, 64)


def test_bad_inputs():
    net = _bf()
    with pytest.raises(TypeError, match="D must be callable"):
        jac.jacobian(3, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="y must have shape"):
        jac.jacobian(net, torch.rand(8))
    with pytest.raises(ValueError, match="chunk_size"):
        jac.jacobian(net, torch.rand(1, 1, 8, 8), chunk_size=0)
    with pytest.raises(ValueError, match="sigma"):
        jac.jacobian(lambda x, s: x, torch.rand(2, 3), sigma=-1.0)
    with pytest.raises(ValueError, match="J must have shape"):
        jac.eigen(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="values"):
        jac.effective_dimension(torch.rand(2, 3, 4))
    with pytest.raises(TypeError, match="prior"):
        jac.ideal_jacobian("data", torch.rand(2, 3), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        jac.ideal_jacobian(IdealDenoiser(torch.rand(4, 3)), torch.rand(2, 3), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        jac.ideal_jacobian(gmm.ring(), torch.rand(2, 2), 0.0)


def _student_ideal_jacobian(data, y, sigma):
    w = torch.softmax(-torch.cdist(y, data) ** 2 / (2 * sigma ** 2), dim=1)  # (B, M)
    m = w @ data
    dev = data[None] - m[:, None]  # (B, M, D)
    return torch.einsum("bm,bmi,bmj->bij", w, dev, dev) / sigma ** 2


def test_ideal_jacobian_checker(capsys):
    import companion as cp

    assert cp.exercises.check_ideal_jacobian(_student_ideal_jacobian)
    assert "✓" in capsys.readouterr().out
    no_sigma = lambda data, y, sigma: _student_ideal_jacobian(data, y, sigma) * sigma ** 2  # noqa: E731
    assert not cp.exercises.check_ideal_jacobian(no_sigma, quiet=True)

    def naive(data, y, sigma):  # unnormalised exponentials: 0/0 at small σ
        w = torch.exp(-torch.cdist(y, data) ** 2 / (2 * sigma ** 2))
        w = w / w.sum(1, keepdim=True)
        m = w @ data
        dev = data[None] - m[:, None]
        return torch.einsum("bm,bmi,bmj->bij", w, dev, dev) / sigma ** 2

    assert not cp.exercises.check_ideal_jacobian(naive, quiet=True)
