"""Typical mistakes in the coding exercises are rejected with the right diagnosis; delegation is caught."""
import math

import pytest
import torch

import companion as cp
from companion.els import local_weights as lw_imported_early
from companion.exercises.core import describe, diagnose


def vp(t, a, b):
    B = a * t + 0.5 * (b - a) * t**2
    return torch.exp(-B / 2), torch.sqrt(torch.expm1(B))


def ideal(x, sigma, data):
    return torch.softmax(-torch.cdist(x, data) ** 2 / (2 * sigma**2), dim=1) @ data


def local_weights(x, data, sigma, k, dim=1):
    sq = ((x[:, None] - data[None]) ** 2).sum(2)
    box = torch.ones(1, 1, k, k, dtype=sq.dtype)
    d2 = torch.nn.functional.conv2d(sq.flatten(0, 1)[:, None], box, padding=k // 2).reshape(sq.shape)
    return torch.softmax(-d2 / (2 * sigma**2), dim=dim)


def gradient_estimation(D, sigmas, x, gamma=2.0):
    s, eps_prev = sigmas.tolist(), None
    for sigma, nxt in zip(s[:-1], s[1:]):
        eps = (x - D(x, sigma)) / sigma
        x = x + (nxt - sigma) * (eps if eps_prev is None else gamma * eps + (1 - gamma) * eps_prev)
        eps_prev = eps
    return x


def drift(x, t, p, score, lam):
    return float(p.f(t)) * x - 0.5 * (1 + lam**2) * float(p.g(t)) ** 2 * score(x, t)


def step32(x, eps, sigma, sigma_next, mu, z):
    sigma_p = (sigma_next / sigma**mu) ** (1 / (1 - mu))
    return (x + (sigma_p - sigma) * eps + math.sqrt(sigma_next**2 - sigma_p**2) * z).float()


def test_correct_answers_pass():
    assert cp.exercises.check_vp_coefficients(vp, quiet=True)
    assert cp.exercises.check_ideal_denoiser(ideal, quiet=True)
    assert cp.exercises.check_local_weights(local_weights, quiet=True)
    assert cp.exercises.check_gradient_estimation(gradient_estimation, quiet=True)
    assert cp.exercises.check_reverse_drift(drift, quiet=True)


MISTAKES = {  # name: (checker, wrong answer, words the message must contain)
    "naive exp(B)-1": (cp.exercises.check_vp_coefficients,
                       lambda t, a, b: (vp(t, a, b)[0], torch.sqrt(torch.exp(a * t + 0.5 * (b - a) * t**2) - 1)),
                       "expm1"),
    "sign of the score term": (cp.exercises.check_reverse_drift,
                               lambda x, t, p, s, lam: drift(x, t, p, lambda y, u: -s(y, u), lam),
                               "differs"),
    "drift of the wrong sign": (cp.exercises.check_reverse_drift, lambda *a: -drift(*a), "sign is flipped"),
    "factor 2": (cp.exercises.check_reverse_drift, lambda *a: 2 * drift(*a), "factor 2"),
    "softmax over the wrong axis": (cp.exercises.check_local_weights,
                                    lambda x, d, s, k: local_weights(x, d, s, k, dim=0), "wrong axis"),
    "transposed": (cp.exercises.check_ideal_denoiser, lambda x, s, d: ideal(x, s, d).T, "wrong order"),
    "naive exp at small sigma": (cp.exercises.check_ideal_denoiser,
                                 lambda x, s, d: (w := torch.exp(-torch.cdist(x, d) ** 2 / (2 * s**2)))
                                 @ d / w.sum(1, keepdim=True), "non-finite"),
    "plain DDIM (gamma = 1)": (cp.exercises.check_gradient_estimation,
                               lambda D, s, x: gradient_estimation(D, s, x, gamma=1.0), "differs"),
    "forgot return": (cp.exercises.check_ideal_denoiser, lambda x, s, d: None, "forget `return`"),
}


@pytest.mark.parametrize("mistake", MISTAKES, ids=str)
def test_typical_mistakes_are_diagnosed(mistake):
    checker, wrong, words = MISTAKES[mistake]
    verdict = checker(wrong, quiet=True)
    assert not verdict, mistake
    assert words in verdict.message, verdict.message


def test_plain_ddim_is_rejected_even_with_one_case():
    ddim = lambda D, s, x: gradient_estimation(D, s, x, gamma=1.0)  # noqa: E731
    assert not cp.exercises.check_gradient_estimation(ddim, n_cases=1, quiet=True)


def _cp_vp(t, a, b):
    p = cp.sde.VP(a, b)
    return p.s(t), p.sigma(t)


def _cp_vp_std(t, a, b):  # VP.std is not watched: the source check catches it
    p = cp.sde.VP(a, b)
    s = torch.exp(-(a * t + 0.5 * (b - a) * t**2) / 2)
    return s, p.std(t) / s


def _cp_heun(D, sigmas, x):  # not the answer, and not watched: only the source check rejects it
    return cp.samplers.heun(D, sigmas, x)


def _cp_ideal(x, sigma, data):
    return cp.denoisers.IdealDenoiser(data)(x, sigma)


def _cp_local(x, data, sigma, k):
    return cp.els.local_weights(x, data, sigma, k)


def _cp_sampler(D, sigmas, x):
    return cp.samplers.sample(D, sigmas, x, gamma=2.0)


def _aliased_local(x, data, sigma, k):
    from companion.els import local_weights as lw
    return lw(x, data, sigma, k)


def _alias_imported_before(x, data, sigma, k):
    return lw_imported_early(x, data, sigma, k)  # bound before the check: only the globals check sees it


DELEGATIONS = [(cp.exercises.check_local_weights, _alias_imported_before),
               (cp.exercises.check_vp_coefficients, _cp_vp_std), (cp.exercises.check_gradient_estimation, _cp_heun),
               (cp.exercises.check_vp_coefficients, _cp_vp), (cp.exercises.check_ideal_denoiser, _cp_ideal),
               (cp.exercises.check_local_weights, _cp_local), (cp.exercises.check_local_weights, _aliased_local),
               (cp.exercises.check_gradient_estimation, _cp_sampler),
               (cp.exercises.check_local_weights, cp.els.local_weights),
               (cp.exercises.check_ideal_denoiser, lambda x, s, d: cp.gmm.GaussianMixture(d, 0.0).denoise(x, s))]


@pytest.mark.parametrize("checker,answer", DELEGATIONS, ids=lambda v: getattr(v, "__name__", ""))
def test_delegation_to_the_companion_is_caught(checker, answer):
    verdict = checker(answer, quiet=True)
    assert not verdict and "companion's own implementation" in verdict.message, verdict.message


def test_runtime_watch_alone_catches_delegation_and_restores():
    """A lambda's source names cp.els too, so switch the source check off to test the run-time watch."""
    before = dict(vars(cp.sde.VP))
    verdict = cp.exercises.compare(_cp_vp, vp, [((torch.rand(3, dtype=torch.float64), 0.1, 20.0), {})],
                                   forbid=[(cp.sde.VP, "s"), (cp.sde.VP, "std")], quiet=True)
    assert not verdict and "VP.s" in verdict.message
    assert dict(vars(cp.sde.VP)) == before  # inherited std uncovered again, s restored


def test_messages_are_readable():
    verdict = cp.exercises.check_gradient_estimation(lambda D, s, x: x, quiet=True)
    assert "bound method" not in verdict.message and " at 0x" not in verdict.message
    assert "function GaussianMixture.denoise" in verdict.message
    assert describe(torch.tensor([0.123456789, 2.0], dtype=torch.float64)) == "[0.1235, 2]"
    assert describe(torch.zeros(3, 5)) == "tensor(3, 5) float32 in [0, 0]"
    assert describe(math.pi) == "3.142"


def test_diagnose_float32():
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = e * (1 + 3e-7)
    assert "float64 (the inputs" in diagnose(g, e, rtol=1e-7, atol=1e-12, was_float32=True)
    assert "computed in float32" in diagnose(g, e, rtol=1e-7, atol=1e-12)
    # the sampler step (tolerance 1e-7) rejects an answer computed in float32 with this diagnosis
    v = cp.exercises.check_sampler_step(lambda *a: step32(*[t.float() if torch.is_tensor(t) else t for t in a]),
                                        quiet=True)
    assert not v or "float32" in v.message


def test_diagnose_is_silent_on_unrelated_errors():
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert diagnose(e + 1.0, e) == ""


# --- named slips added after a student reading of the exercises (each wrong answer written as a student would)
def _ddpm(x, x0, s, sn, z, ratio=2, noise="posterior"):
    std = {"posterior": sn * math.sqrt(1 - sn**2 / s**2), "variance": sn**2 * (1 - sn**2 / s**2),
           "forward": math.sqrt(s**2 - sn**2), "fresh": sn}[noise]
    return x0 + (sn / s) ** ratio * (x - x0) + std * z


def _log_step(log_p, score, dw, f, g, dt, dt_abs=False, norm=1.0, noise=1.0):
    rate = -f * score.shape[1] - norm * 0.5 * g**2 * (score**2).sum(1)
    return log_p + rate * (abs(dt) if dt_abs else dt) + noise * g * (score * dw).sum(1)


def _family(log_p, score, div, dw, f, g, dt, a, zeta, with_div=True):
    rate = -f * score.shape[1] + (0.5 - a) * g**2 * (score**2).sum(1)
    rate = rate + (0.5 * (1 - zeta**2) * g**2 * div if with_div else 0)
    return log_p + rate * dt + zeta * g * (score * dw).sum(1)


def _ideal_jacobian(data, y, sigma, power=2, centred=True):
    w = torch.softmax(-torch.cdist(y, data) ** 2 / (2 * sigma**2), dim=1)
    dev = data[None] - (w @ data)[:, None] if centred else data[None].expand(len(y), -1, -1)
    return torch.einsum("bm,bmi,bmj->bij", w, dev, dev) / sigma**power


def _local_pool(x, data, sigma, k, channels=True):
    sq = (x[:, None] - data[None]) ** 2
    sq = sq.sum(2) if channels else sq[:, :, 0]
    d2 = torch.nn.functional.avg_pool2d(sq.flatten(0, 1)[:, None], k, stride=1, padding=k // 2,
                                        count_include_pad=True) * (k * k if not channels else 1)
    return torch.softmax(-d2.reshape(sq.shape) / (2 * sigma**2), dim=1)


def _divergence(f, x, trace=True):
    x = x.detach().requires_grad_(True)
    y = f(x).flatten(1)
    if not trace:
        return torch.autograd.grad(y.sum(), x)[0].flatten(1).sum(1)
    return sum(torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
               for i in range(y.shape[1]))


def _ode(D, x, smin, smax, steps, at_end=False):
    d, h = x.shape[1], (math.log(smax) - math.log(smin)) / steps
    ell = torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(steps):
        sigma = smin * math.exp((k + at_end) * h)
        ell = ell + h * (d - _divergence(lambda y: D(y, sigma), x))
        x = x + h * (x - D(x, sigma))
    return ell - 0.5 * (x**2).sum(1) / smax**2 - 0.5 * d * math.log(2 * math.pi * smax**2)


def _drift(x, t, p, score, lam, lam_sign=1.0, g_power=2):
    return float(p.f(t)) * x - 0.5 * (1 + lam_sign * lam**2) * float(p.g(t)) ** g_power * score(x, t)


X = cp.exercises
READING_RIGHT = [(X.check_ddpm_step, _ddpm), (X.check_log_density_step, _log_step),
                 (X.check_log_density_step_family, _family), (X.check_ideal_jacobian, _ideal_jacobian),
                 (X.check_divergence, _divergence), (X.check_ode_log_likelihood, _ode),
                 (X.check_reverse_drift, _drift)]
READING_SLIPS = {  # name: (checker, wrong answer, words the message must contain)
    "drift 1 - lam^2": (X.check_reverse_drift, lambda *a: _drift(*a, lam_sign=-1.0), "forward-time family"),
    "drift g not squared": (X.check_reverse_drift, lambda *a: _drift(*a, g_power=1), "g is not squared"),
    "ddpm ddim ratio": (X.check_ddpm_step, lambda *a: _ddpm(*a, ratio=1), "DDIM's ratio"),
    "ddpm variance as std": (X.check_ddpm_step, lambda *a: _ddpm(*a, noise="variance"), "variance used as"),
    "ddpm forward noise": (X.check_ddpm_step, lambda *a: _ddpm(*a, noise="forward"), "forward increment"),
    "ddpm fresh noise": (X.check_ddpm_step, lambda *a: _ddpm(*a, noise="fresh"), "fresh draw"),
    "log step |dt|": (X.check_log_density_step, lambda *a: _log_step(*a, dt_abs=True), "dt < 0"),
    "log step norm sign": (X.check_log_density_step, lambda *a: _log_step(*a, norm=-1.0), "‖score‖² term"),
    "log step noise sign": (X.check_log_density_step, lambda *a: _log_step(*a, noise=-1.0), "noise term"),
    "family without div": (X.check_log_density_step_family, lambda *a: _family(*a, with_div=False),
                           "divergence term is missing"),
    "jacobian over sigma": (X.check_ideal_jacobian, lambda *a: _ideal_jacobian(*a, power=1), "instead of σ²"),
    "jacobian second moment": (X.check_ideal_jacobian, lambda *a: _ideal_jacobian(*a, centred=False),
                               "posterior mean"),
    "local mean over patch": (X.check_local_weights, _local_pool, "mean over the patch"),
    "local one channel": (X.check_local_weights, lambda *a: _local_pool(*a, channels=False), "one channel"),
    "divergence of the sum": (X.check_divergence, lambda f, x: _divergence(f, x, trace=False), "the trace"),
    "ode at the step end": (X.check_ode_log_likelihood, lambda *a: _ode(*a, at_end=True), "at the start"),
}


@pytest.mark.parametrize("checker,answer", READING_RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_student_style_right_answers_pass(checker, answer):
    verdict = checker(answer, quiet=True)
    assert verdict, verdict.message


@pytest.mark.parametrize("slip", READING_SLIPS, ids=str)
def test_slips_found_in_the_student_reading_are_named(slip):
    checker, wrong, words = READING_SLIPS[slip]
    verdict = checker(wrong, quiet=True)
    assert not verdict, slip
    assert "Likely cause" in verdict.message and words in verdict.message, verdict.message


def test_small_matrices_keep_their_shape_in_messages():
    assert describe(torch.zeros(2, 2, dtype=torch.float64)) == "tensor(2, 2) float64 in [0, 0]"
    assert describe(torch.tensor([1.0, 2.0])) == "[1, 2]"


def test_written_out_slip_references_agree_with_the_companion_when_no_slip_is_on():
    """Each checker's written-out formula (used to name a slip) is its reference with every switch off, so a
    named slip differs from the reference by that one slip."""
    from companion.exercises import density, els, fokker, gahb, likelihood, score
    g = torch.Generator().manual_seed(7)
    x, data = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    z, x0 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(score._ddpm_written(x, x0, 2.0, 0.7, z), score._ddpm_reference(x, x0, 2.0, 0.7, z))
    assert torch.allclose(gahb._ideal_written(data, x, 0.4), gahb._reference(data, x, 0.4))
    lp, dw = torch.randn(4, generator=g, dtype=torch.float64), 0.1 * z
    assert torch.allclose(density._step_written(lp, x, dw, -0.3, 1.7, -0.01), density._reference(lp, x, dw, -0.3, 1.7, -0.01))
    gmm = cp.gmm.GaussianMixture(data, 0.5)
    for proc, lam in ((cp.sde.VP(), 0.5), (cp.sde.VE(0.01, 10.0), 1.0)):
        args = (x, 0.3, proc, cp.reverse.mixture_score(gmm, proc), lam)
        assert torch.allclose(fokker._drift(*args), fokker._reference(*args))
    xi, di = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64), torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(els._local_written(xi, di, 0.8, 3), cp.els.local_weights(xi, di, 0.8, 3))
    f = lambda y: torch.tanh(y) * y  # noqa: E731  (row-wise and diagonal: sum of partials = trace)
    assert torch.allclose(likelihood._sum_of_partials(f, x), cp.likelihood.exact_divergence(f, x))
    x2 = x[:, :2].contiguous()
    gmm2 = cp.gmm.GaussianMixture(data[:, :2].contiguous(), 0.5)
    assert torch.allclose(likelihood._ode(gmm2.denoise, x2, 0.01, 20.0, 5),
                          likelihood._ode_reference(gmm2.denoise, x2, 0.01, 20.0, 5), rtol=1e-10)
