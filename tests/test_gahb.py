"""Tests of Chapter 7's building blocks: the bias-free U-Net (nets), the C^α and disk families and
disjoint training sets (data), and training, sampling and similarity (gahb)."""
import math

import pytest
import torch

from companion import data, gahb, jacobian as jac, nets, recipes, training
from companion.denoisers import IdealDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ nets.BiasFreeUNet
def test_bias_free_unet_has_no_additive_constant():
    net = nets.BiasFreeUNet()
    assert not [n for n, _ in net.named_parameters() if n.endswith("bias")]
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 16, 16)).abs().max() == 0  # D(0) = 0


def test_norm_divides_by_the_batch_sd_in_training_and_the_running_sd_in_eval():
    norm = nets.BiasFreeNorm(3)
    h = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None] + 1.0
    out = norm(h)
    sd = torch.sqrt(h.var(dim=(0, 2, 3), unbiased=False) + 1e-5)
    torch.testing.assert_close(out, h / sd[None, :, None, None])
    torch.testing.assert_close(norm.running_sd.flatten(), 0.9 + 0.1 * sd)
    norm.eval()
    torch.testing.assert_close(norm(2 * h), 2 * h / norm.running_sd)


def test_receptive_field_is_the_support_of_the_jacobian():
    torch.manual_seed(0)
    net = nets.BiasFreeUNet(1, 2, 2, 1).eval()  # rf = 1 + 2 + 1 + 4 + 2 + 2 = 12
    assert net.receptive_field == 12
    y = torch.rand(1, 1, 32, 32)
    rows = jac.jacobian(net, y)[0].reshape(32, 32, 32, 32)
    widths = []
    for i in range(12, 16):  # output pixels far from the border, all four phases of the 2×2 pooling
        support = rows[i, i].abs().sum(0) > 0
        cols = support.nonzero()[:, 0]
        widths.append((cols.max() - cols.min() + 1).item())
    assert max(widths) == net.receptive_field


def test_bias_free_unet_spec_build_and_bad_inputs():
    net = nets.BiasFreeUNet(1, 4, 2, 1)
    again = nets.build(nets.spec(net))
    assert isinstance(again, nets.BiasFreeUNet) and again.kwargs == net.kwargs
    with pytest.raises(ValueError, match="base"):
        nets.BiasFreeUNet(base=0)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 1, 7, 8))
    with pytest.raises(ValueError, match="labels"):
        net(torch.rand(1, 1, 8, 8), 0.5, torch.tensor([1]))
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.rand(1, 2, 8, 8))


def test_bias_free_unet_runs_on_its_parameters_device():
    net = nets.BiasFreeUNet(1, 4, 2, 1).to("meta").eval()
    out = net(torch.rand(2, 1, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 1, 8, 8)


# ------------------------------------------------------------------ data
def _spectrum_slope(signals, dims):
    """Least-squares slope of log power against log |k| (1 ≤ |k| ≤ size/2)."""
    size = signals.shape[-1]
    axes = tuple(range(1, dims + 1))
    power = (torch.fft.fftn(signals, dim=axes).abs() ** 2).mean(0)
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64).abs()
    if dims == 2:
        k = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    keep = (k >= 1) & (k <= size / 2)
    x, y = torch.log(k[keep]), torch.log(power[keep])
    x = x - x.mean()
    return ((x * (y - y.mean())).sum() / (x ** 2).sum()).item()


@pytest.mark.parametrize("alpha", [1.0, 2.5])
@pytest.mark.parametrize("dims", [1, 2])
def test_power_law_noise_has_spectrum_slope_minus_two_alpha(alpha, dims):
    g = torch.Generator().manual_seed(0)
    shape = (400, 32) if dims == 1 else (100, 32, 32)
    assert _spectrum_slope(data.power_law_noise(shape, alpha, g), dims) == pytest.approx(-2 * alpha, abs=0.15)


def test_c_alpha_images():
    g = torch.Generator().manual_seed(0)
    x = data.c_alpha(200, 16, 2.0, g)
    assert x.shape == (200, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    # the two sides of the contour: each image spans its full range [0, 1] only across both regions
    assert (x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean() > 0.5
    # larger α: smoother images, less energy in pixel differences along rows (the background)
    smooth = data.c_alpha(200, 16, 4.0, torch.Generator().manual_seed(0))
    rough = data.c_alpha(200, 16, 1.0, torch.Generator().manual_seed(0))
    tv = lambda im: (im[..., 1:] - im[..., :-1]).abs().mean()  # noqa: E731
    assert tv(smooth) < tv(rough)
    again = data.c_alpha(200, 16, 2.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, x)


def test_disk_parameters_are_recovered_from_the_images():
    g = torch.Generator().manual_seed(0)
    p = data.disk_params(50, 32, g)
    p[:, 3] = 0.8 + 0.2 * torch.rand(50, generator=g, dtype=torch.float64)  # contrast for the estimates
    p[:, 4] = 0.2 * torch.rand(50, generator=g, dtype=torch.float64)
    im = data.disk_images(p, 32)[:, 0]
    assert im.shape == (50, 32, 32)
    b = im[:, 0, 0]  # corners are background
    f = im[torch.arange(50), p[:, 0].long(), p[:, 1].long()]  # the centre is foreground
    torch.testing.assert_close(b, p[:, 4])
    torch.testing.assert_close(f, p[:, 3])
    cover = (im - b[:, None, None]) / (f - b)[:, None, None]
    area = cover.sum((1, 2))
    torch.testing.assert_close(area.sqrt() / math.sqrt(math.pi), p[:, 2], atol=0.05, rtol=0)
    grid = torch.arange(32, dtype=torch.float64) + 0.5
    row = (cover.sum(2) * grid).sum(1) / area
    col = (cover.sum(1) * grid).sum(1) / area
    torch.testing.assert_close(row, p[:, 0], atol=0.02, rtol=0)
    torch.testing.assert_close(col, p[:, 1], atol=0.02, rtol=0)
    assert (p[:, 2] >= 4).all() and (p[:, 2] <= 8).all()
    assert (p[:, 0] - p[:, 2] >= 1).all() and (p[:, 0] + p[:, 2] <= 31).all()


def test_disk_tangent_is_an_orthonormal_basis_of_the_derivatives():
    p = data.disk_params(3, 16, torch.Generator().manual_seed(1))
    T = data.disk_tangent(p, 16)
    assert T.shape == (3, 5, 256)
    torch.testing.assert_close(T @ T.transpose(1, 2), torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
    for b in range(3):
        Jp = torch.autograd.functional.jacobian(lambda q: data.disk_images(q[None], 16).flatten(), p[b])  # (256, 5)
        resid = Jp - T[b].T @ (T[b] @ Jp)
        assert resid.norm() < 1e-6 * Jp.norm()


def test_disjoint_sets():
    images, _ = data.digits()
    a, b = data.disjoint_sets(images, 898, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (898, 1, 8, 8)
    ka = {tuple(x.flatten().tolist()) for x in a}
    kb = {tuple(x.flatten().tolist()) for x in b}
    assert not ka & kb
    with pytest.raises(ValueError, match=r"n must be at most len\(images\) // 2 = 898"):
        data.disjoint_sets(images, 899)


def test_data_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        data.c_alpha(2, 16, 0.0)
    with pytest.raises(ValueError, match="shape"):
        data.power_law_noise((3,), 1.0)
    with pytest.raises(ValueError, match="size"):
        data.c_alpha(2, 3)
    with pytest.raises(ValueError, match="n must be a positive int"):
        data.disks(0)
    with pytest.raises(ValueError, match="params"):
        data.disk_images(torch.rand(3, 4))
    with pytest.raises(ValueError, match="step"):
        data.disk_tangent(torch.rand(3, 5), step=0.0)
    with pytest.raises(ValueError, match="images"):
        data.disjoint_sets([1, 2, 3], 1)


# ------------------------------------------------------------------ gahb
def test_sigma_is_uniform_in_its_square_root():
    s = gahb.sample_sigma_sqrt(20000, 2.0, torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 2.0
    for t in (0.02, 0.5, 1.5):  # P(σ ≤ t) = sqrt(t / σ_max)
        assert (s <= t).float().mean().item() == pytest.approx(math.sqrt(t / 2.0), abs=0.015)
    with pytest.raises(ValueError, match="sigma_max"):
        gahb.sample_sigma_sqrt(3, 0.0)


def test_train_blind_fits_one_image_and_is_deterministic():
    x = data.c_alpha(1, 8, 2.0, torch.Generator().manual_seed(0))

    def run():
        torch.manual_seed(0)
        net = nets.BiasFreeUNet(1, 4, 2, 1)
        return gahb.train_blind(net, x, 150, batch_size=8, lr=1e-2, generator=torch.Generator().manual_seed(0),
                                progress=False)

    res, res2 = run(), run()
    assert res.losses == res2.losses
    assert sum(res.losses[-20:]) < 0.5 * sum(res.losses[:20])
    fresh = gahb.train_blind(nets.BiasFreeUNet(1, 4, 2, 1), lambda n, g: data.disks(n, 8, g), 3, batch_size=4,
                             progress=False)
    assert len(fresh.losses) == 3
    with pytest.raises(ValueError, match="images must have shape"):
        gahb.train_blind(nets.BiasFreeUNet(), torch.rand(4, 16), 2, progress=False)


def test_training_sets_of_the_sweep_are_disjoint_and_fixed():
    cfg = dict(gahb.CONFIGS["gahb_calpha2_n100_a"], pool=400)
    a = gahb.training_set(cfg)
    b = gahb.training_set(dict(cfg, half="b"))
    assert a.shape == b.shape == (100, 1, 16, 16)
    assert torch.cdist(a.flatten(1), b.flatten(1)).min() > 0
    torch.testing.assert_close(gahb.training_set(cfg), a)
    assert gahb.training_set(gahb.CONFIGS["gahb_disks"]) is None
    with pytest.raises(ValueError, match="name must be one of"):
        gahb.train_recipe("gahb_nope")


def test_sample_from_a_memorising_denoiser_returns_the_training_image():
    x = data.c_alpha(1, 8, 2.0, torch.Generator().manual_seed(0)).double()
    ideal = IdealDenoiser(x)
    out = gahb.sample(lambda y: ideal(y, 0.1), torch.randn(3, 1, 8, 8, dtype=torch.float64))
    torch.testing.assert_close(out, x.expand(3, 1, 8, 8))
    with pytest.raises(ValueError, match="noise"):
        gahb.sample(ideal, torch.randn(8, 8))


def test_similarity_nearest_and_psnr():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 4, 4, generator=g)
    torch.testing.assert_close(gahb.cosine_similarity(a, 3 * a + 2), torch.ones(5))
    torch.testing.assert_close(gahb.cosine_similarity(a, -a), -torch.ones(5))
    train = torch.rand(20, 1, 4, 4, generator=g)
    sim, idx = gahb.nearest(0.5 * train[[3, 7]] + 1, train)
    assert idx.tolist() == [3, 7]
    torch.testing.assert_close(sim, torch.ones(2))
    torch.testing.assert_close(gahb.psnr(torch.full((2, 4), 0.1), torch.zeros(2, 4)), torch.full((2,), 20.0))
    with pytest.raises(ValueError, match="same shape"):
        gahb.cosine_similarity(a, a[:2])


TINY = dict(steps=2, batch_size=4, base=2, levels=2, convs=1, size=8)


@pytest.mark.parametrize("name", ["gahb_calpha2_n10000_b", "gahb_calpha1", "gahb_disks"])
def test_recipes_run_for_a_few_steps(name, tmp_path):
    out = recipes.main([name, "--steps", "2", "--out", str(tmp_path / "m.pt"), "--quiet"])
    loaded = training.load(out, device="cpu")
    assert isinstance(loaded, nets.BiasFreeUNet) and loaded.checkpoint["recipe"] == name
    model = gahb.train_recipe(name, TINY, progress=False)
    assert model.config["steps"] == 2 and model.metrics["n_train"] == gahb.CONFIGS[name]["n_train"]


def test_a_recipe_resumes_from_its_saved_state(tmp_path):
    """An interrupted recipe (3 of 5 steps) resumed from ``resume`` equals an uninterrupted one."""
    name, path = "gahb_calpha2_n10_a", tmp_path / "state.pt"

    def run(steps, resume):
        return gahb.train_recipe(name, dict(TINY, steps=steps), progress=False, resume=resume)

    whole = run(5, None)
    run(3, path)                                      # "disconnect" after 3 steps
    assert torch.load(path, weights_only=True)["step"] == 3
    resumed = run(5, path)
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    again = run(5, path)                              # finished: nothing left to train
    assert again.metrics["final_loss"] == whole.metrics["final_loss"]
    with pytest.raises(ValueError, match="resume_every"):
        gahb.train_blind(nets.BiasFreeUNet(1, 2, 2, 1), torch.rand(4, 1, 8, 8), 2, resume=path,
                         resume_every=0)


def test_every_gahb_recipe_is_registered_and_shipped():
    assert set(gahb.RECIPES) <= set(recipes.RECIPES)
    sizes = [(training.CHECKPOINT_DIR / f"{name}.pt").stat().st_size for name in gahb.RECIPES]
    assert max(sizes) <= 2_000_000 and sum(sizes) <= 10_000_000
    for name in gahb.RECIPES:
        raw = torch.load(training.CHECKPOINT_DIR / f"{name}.pt", weights_only=True)
        assert raw["config"] == recipes.CONFIGS[name]


def test_psnr_slope_of_known_denoisers():
    clean = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.3, 0.1, 0.03])
    p_in, p_out, slope, fitted = gahb.psnr_slope(lambda y: y, clean, sigmas)  # identity: output = input
    assert slope == pytest.approx(1.0, abs=0.05) and p_in[1].item() == pytest.approx(20.0) and fitted.all()
    _, _, slope, _ = gahb.psnr_slope(lambda y: 0.5 * clean + 0.5 * y, clean, sigmas)  # MSE = σ²/4: slope 1
    assert slope == pytest.approx(1.0, abs=0.05)
    _, p_out, slope, _ = gahb.psnr_slope(lambda y: clean + 0.01, clean, sigmas)  # constant error: slope 0
    assert slope == pytest.approx(0.0, abs=1e-6) and p_out[0].item() == pytest.approx(40.0, abs=1e-3)
    with pytest.raises(ValueError, match="sigmas"):
        gahb.psnr_slope(lambda y: y, clean, torch.tensor([0.1]))


def test_psnr_slope_fits_only_where_the_denoiser_beats_the_identity():
    clean = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.3, 0.1, 0.03, 0.01, 0.003])
    # half the noise plus a constant error 0.01 (40 dB): better than the identity only while σ > ~0.012
    D = lambda y: 0.5 * (y - clean) + clean + 0.01  # noqa: E731
    p_in, p_out, all_slope, _ = gahb.psnr_slope(D, clean, sigmas)
    _, _, slope, fitted = gahb.psnr_slope(D, clean, sigmas, above_identity=True)
    assert fitted.tolist() == [True, True, True, False, False] and (p_out[~fitted] < p_in[~fitted]).all()
    assert slope > 0.8 and all_slope < 0.7  # the crossing bends the all-level fit
    worse = lambda y: clean + 1.1 * (y - clean)  # noqa: E731  (amplifies the noise)
    _, _, slope, fitted = gahb.psnr_slope(worse, clean, sigmas, above_identity=True)
    assert not fitted.any() and math.isnan(slope)


def _ring_vector(params, n, size=16):
    """cos(n θ) on the pixels within 1.5 px of each disk's edge, 0 elsewhere: (B, size², 1)."""
    grid = torch.arange(size, dtype=torch.float64) + 0.5
    dr, dc = grid[None, :, None] - params[:, 0, None, None], grid[None, None, :] - params[:, 1, None, None]
    on = ((dr ** 2 + dc ** 2).sqrt() - params[:, 2, None, None]).abs() <= 1.5
    return (torch.cos(n * torch.atan2(dr, dc)) * on).flatten(1)[:, :, None]


def test_edge_harmonics_finds_the_order_of_a_ring_wave():
    params = data.disk_params(3, 16, torch.Generator().manual_seed(0))
    for n in (0, 2, 3):
        edge, harm, ring = gahb.edge_harmonics(_ring_vector(params, n), params)
        torch.testing.assert_close(edge, torch.ones_like(edge))
        assert harm[:, n, 0].min() > 0.999 and harm[:, :, 0].sum(1).max() < 1.001
        assert ((ring > 0) & (ring < 0.5)).all()
    inside = (data.disk_images(params, 16) > data.disk_images(params, 16).mean()).double()
    off_ring = (1 - _ring_vector(params, 0).abs().reshape(3, 1, 16, 16)) * torch.rand(3, 1, 16, 16)
    edge, _, _ = gahb.edge_harmonics(off_ring.flatten(1)[:, :, None], params)
    assert edge.max() < 1e-12 and inside.sum() > 0
    with pytest.raises(ValueError, match="vectors"):
        gahb.edge_harmonics(torch.zeros(3, 64, 1), params)
    with pytest.raises(ValueError, match="params"):
        gahb.edge_harmonics(torch.zeros(3, 256, 1), params[:, :4])


def test_compare_halves_of_a_memorising_pair():
    train = data.c_alpha(5, 8, 2.0, torch.Generator().manual_seed(0)).double()
    ideal = IdealDenoiser(train)
    D = lambda y: ideal(y, 0.05)  # noqa: E731  (a blind stand-in that memorises the 5 images)
    new = data.c_alpha(4, 8, 2.0, torch.Generator().manual_seed(1)).double()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = gahb.compare_halves(D, D, train, noise, new)
    assert r["sim_ab"] == pytest.approx(1.0) and r["sim_train"] == pytest.approx(1.0)
    assert r["sim_new"] < 0.999 and r["gap"] > 3.0  # memorisation: better on its own images
    assert 0 < r["gap_se"] < r["gap"] / 3
    torch.testing.assert_close(r["nearest"], r["xa"])


def test_digits_halves():
    cfg = gahb.CONFIGS["gahb_digits_n898_a"]
    a, b = gahb.training_set(cfg), gahb.training_set(dict(cfg, half="b"))
    assert a.shape == b.shape == (898, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.cdist(a.flatten(1), b.flatten(1)).min() > 0
    with pytest.raises(ValueError, match="digits"):
        gahb.training_set(dict(cfg, size=16))
