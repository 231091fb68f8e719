import torch

import companion as cp


def vp_coefficients(t, beta_min, beta_max):
    B = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    return torch.exp(-B / 2), torch.sqrt(torch.expm1(B))


def test_checker_accepts_correct_solution(capsys):
    assert cp.exercises.check_vp_coefficients(vp_coefficients)
    assert "✓" in capsys.readouterr().out


def test_checker_rejects_wrong_values(capsys):
    wrong = lambda t, a, b: (torch.exp(-(a * t + 0.5 * (b - a) * t**2)), vp_coefficients(t, a, b)[1])  # noqa: E731
    verdict = cp.exercises.check_vp_coefficients(wrong)
    assert not verdict and "differs" in capsys.readouterr().out


def test_checker_reports_exceptions_and_shapes(capsys):
    def unfinished(t, a, b):
        raise NotImplementedError

    assert not cp.exercises.check_vp_coefficients(unfinished)
    assert "not implemented" in capsys.readouterr().out
    assert not cp.exercises.check_vp_coefficients(lambda t, a, b: (t[:3], t))
    assert "shape" in capsys.readouterr().out
    assert not cp.exercises.check_vp_coefficients(lambda t, a, b: t)
    assert "returned 1 value" in capsys.readouterr().out


def test_student_cannot_change_reference_inputs():
    def in_place(t, a, b):
        s, sig = vp_coefficients(t, a, b)
        t.zero_()
        return s, sig

    assert cp.exercises.check_vp_coefficients(in_place, quiet=True)


def test_vp_checker_rejects_the_typical_wrong_answers():
    """naive exp(B) − 1 (cancellation at small t), a sign slip, a missing ½ in B or in s, σ² for σ."""
    def B(t, a, b):
        return a * t + 0.5 * (b - a) * t**2

    wrong = {
        "exp(B) - 1": lambda t, a, b: (torch.exp(-B(t, a, b) / 2), torch.sqrt(torch.exp(B(t, a, b)) - 1)),
        "sign of s": lambda t, a, b: (torch.exp(B(t, a, b) / 2), torch.sqrt(torch.expm1(B(t, a, b)))),
        "½ in B": lambda t, a, b: vp_coefficients(t, 2 * a, 2 * b),
        "½ in s": lambda t, a, b: (torch.exp(-B(t, a, b)), torch.sqrt(torch.expm1(B(t, a, b)))),
        "σ²": lambda t, a, b: (torch.exp(-B(t, a, b) / 2), torch.expm1(B(t, a, b))),
    }
    for name, fn in wrong.items():
        assert not cp.exercises.check_vp_coefficients(fn, quiet=True), name


def _reverse_drift(x, t, process, score, lam):
    return process.f(t).item() * x - 0.5 * (1 + lam**2) * process.g(t).item() ** 2 * score(x, t)


def test_reverse_drift_checker_accepts_right_and_rejects_typical_wrong_answers():
    assert cp.exercises.check_reverse_drift(_reverse_drift, quiet=True)
    wrong = {
        "forward-time 1 - λ²": lambda x, t, p, s, lam: p.f(t).item() * x - 0.5 * (1 - lam**2) * p.g(t).item() ** 2 * s(x, t),
        "no ½": lambda x, t, p, s, lam: p.f(t).item() * x - (1 + lam**2) * p.g(t).item() ** 2 * s(x, t),
        "sign of the score": lambda x, t, p, s, lam: p.f(t).item() * x + 0.5 * (1 + lam**2) * p.g(t).item() ** 2 * s(x, t),
        "g not squared": lambda x, t, p, s, lam: p.f(t).item() * x - 0.5 * (1 + lam**2) * p.g(t).item() * s(x, t),
        "λ not squared": lambda x, t, p, s, lam: p.f(t).item() * x - 0.5 * (1 + lam) * p.g(t).item() ** 2 * s(x, t),
        "no f x": lambda x, t, p, s, lam: -0.5 * (1 + lam**2) * p.g(t).item() ** 2 * s(x, t),
    }
    for name, fn in wrong.items():
        assert not cp.exercises.check_reverse_drift(fn, quiet=True), name


def _ddpm_step(x, x0_hat, sigma, sigma_next, z):
    r = sigma_next**2 / sigma**2
    return x0_hat + r * (x - x0_hat) + sigma_next * (1 - r) ** 0.5 * z


def test_ddpm_step_checker_accepts_the_posterior_and_rejects_typical_wrong_answers():
    assert cp.exercises.check_ddpm_step(_ddpm_step, quiet=True)
    wrong = {
        "DDIM mean": lambda x, x0, s, sn, z: x0 + sn / s * (x - x0) + sn * (1 - sn**2 / s**2) ** 0.5 * z,
        "variance for std": lambda x, x0, s, sn, z: x0 + sn**2 / s**2 * (x - x0) + sn**2 * (1 - sn**2 / s**2) * z,
        "noise σ'": lambda x, x0, s, sn, z: x0 + sn**2 / s**2 * (x - x0) + sn * z,
        "forward increment": lambda x, x0, s, sn, z: x0 + sn**2 / s**2 * (x - x0) + (s**2 - sn**2) ** 0.5 * z,
        "no noise": lambda x, x0, s, sn, z: x0 + sn**2 / s**2 * (x - x0),
    }
    for name, fn in wrong.items():
        assert not cp.exercises.check_ddpm_step(fn, quiet=True), name


# ---------------------------------------------------------------- second coding exercises of Chapters 5-8
# Each answer below is written as a student would (independently of the checkers' internals); ``slip``
# switches on one typical mistake, which the checker must reject with its diagnosis.
import math  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _family_step(log_p, score, div, dw, f, g, dt, a, zeta, slip=""):
    d = score.shape[0 if slip == "axis" else 1]
    div_coef = 0.5 * (1 + zeta**2) if slip == "ito" else 0.5 * (1 - zeta**2)
    norm_coef = a - 0.5 if slip == "norm sign" else 0.5 - a
    noise = zeta**2 if slip == "zeta squared" else zeta
    drift = -f * d + div_coef * g**2 * div + norm_coef * g**2 * (score**2).sum(1)
    return log_p + drift * dt + noise * g * (score * dw).sum(1)


def _els(x, data, sigma, k, slip=""):
    """Circular ELS by rolling the images: patch entry (u, v) at pixel (i, j) is image[i + u, j + v]."""
    r = k // 2
    def patches(im):  # (N, C, H, W) -> (N, H·W, C·k²)
        if slip == "zero padding":
            p = F.pad(im, (r, r, r, r))
            shifted = [p[:, :, r + u:r + u + im.shape[2], r + v:r + v + im.shape[3]]
                       for u in range(-r, r + 1) for v in range(-r, r + 1)]
        else:
            shifted = [torch.roll(im, (-u, -v), (2, 3)) for u in range(-r, r + 1) for v in range(-r, r + 1)]
        return torch.stack(shifted, 2).flatten(1, 2).flatten(2).transpose(1, 2)
    B, C, H, W = x.shape
    q, cand = patches(x), patches(data)                            # (B, L, P), (K, L, P)
    d2 = ((q[:, :, None, None] - cand[None, None]) ** 2).sum(-1)   # (B, L, K, L)
    if slip == "ls":
        L = H * W
        d2 = torch.where(torch.eye(L, dtype=torch.bool)[None, :, None], d2, torch.inf)
    scale = {"sigma": 2 * sigma, "no half": sigma**2}.get(slip, 2 * sigma**2)
    w = torch.softmax(-d2.flatten(2) / scale, dim=2)               # (B, L, K·L)
    if slip == "patch mean":
        values = cand.reshape(-1, C, k * k).mean(2)
    else:
        values = data.flatten(2).transpose(1, 2).reshape(-1, C)     # centre pixels (K·L, C)
    return (w @ values).transpose(1, 2).reshape(B, C, H, W)


def _mixture_jacobian(means, stds, weights, y, sigma, slip=""):
    D, v = means.shape[1], stds**2 + sigma**2
    logits = weights.log() - ((y[:, None] - means[None]) ** 2).sum(2) / (2 * v)
    if slip != "no normalisation":
        logits = logits - 0.5 * D * v.log()
    r = torch.softmax(logits, 1) if slip != "naive exp" else logits.exp() / logits.exp().sum(1, keepdim=True)
    post = means + (stds**2 / v)[:, None] * (y[:, None] - means)        # (B, K, D)
    dev = post - torch.einsum("bk,bkd->bd", r, post)[:, None]
    cov = torch.einsum("bk,bki,bkj->bij", r, dev, dev)
    if slip != "no within":
        cov = cov + torch.einsum("bk,k->b", r, stds**2 * sigma**2 / v)[:, None, None] * torch.eye(D)
    return cov / (sigma if slip == "sigma" else sigma**2)


def _smoothed_distance(x, data, sigma, slip=""):
    q = ((x[:, None] - data[None]) ** 2).sum(-1)
    if slip == "not squared":
        q = q.sqrt()
    t = 2 * (sigma if slip == "sigma" else sigma**2)
    lse = torch.log(torch.exp(-q / t).sum(1)) if slip == "naive exp" else torch.logsumexp(-q / t, 1)
    if slip == "mean":
        lse = lse - math.log(data.shape[0])
    d2 = -(1 if slip == "prefactor" else 2) * sigma**2 * lse
    half_grad = x - torch.softmax(-q / t, 1) @ data
    return d2, (-half_grad if slip == "gradient sign" else half_grad)


SECOND_EXERCISES = {  # checker: (answer, {slip: words the message must contain})
    "check_log_density_step_family": (_family_step, {
        "ito": "Itô correction has the wrong sign", "norm sign": "‖s‖² term has the wrong sign",
        "axis": "not the batch size", "zeta squared": "not its square"}),
    "check_circular_els": (_els, {
        "zero padding": "zero padding", "sigma": "σ where σ² belongs", "no half": "factor 2 in the exponent",
        "ls": "that is the LS machine", "patch mean": "centre pixels"}),
    "check_mixture_jacobian": (_mixture_jacobian, {
        "no normalisation": "normalising factor", "no within": "within-component term is missing",
        "sigma": "divided by σ instead of σ²", "naive exp": "non-finite"}),
    "check_smoothed_distance": (_smoothed_distance, {
        "prefactor": "prefactor is −2σ²", "sigma": "σ where σ² belongs", "mean": "a mean over the data set",
        "not squared": "not squared", "naive exp": "non-finite", "gradient sign": "sign is flipped"}),
}


@pytest.mark.parametrize("check", SECOND_EXERCISES)
def test_second_exercise_accepts_the_answer_and_diagnoses_each_slip(check):
    checker = getattr(cp.exercises, check)
    answer, slips = SECOND_EXERCISES[check]
    for seed in (0, 1, 2):  # the public seed and two hidden ones
        assert checker(answer, seed=seed, quiet=True), check
    for slip, words in slips.items():
        verdict = checker(lambda *a, s=slip: answer(*a, slip=s), quiet=True)
        assert not verdict and words in verdict.message, (slip, verdict.message)


def _dtk_step(log_p, score, dw, f, g, dt):
    return log_p + cp.density_tracking.log_density_increment(score, dw, f, g, dt)


def _dtk_family(log_p, score, div, dw, f, g, dt, a, zeta):
    return log_p + cp.density_tracking.log_density_increment(score, dw, f, g, dt, math.sqrt(2 * a - 1), zeta, div)


def _autograd_jacobian(data, y, sigma):  # the companion's autograd Jacobian of its ideal denoiser
    return cp.jacobian.jacobian(cp.denoisers.IdealDenoiser(data), y, sigma)


def _exact_jacobian(data, y, sigma):
    return cp.jacobian.ideal_jacobian(cp.denoisers.IdealDenoiser(data), y, sigma)


def _gmm_jacobian(means, stds, weights, y, sigma):
    return cp.jacobian.ideal_jacobian(cp.gmm.GaussianMixture(means, stds, weights), y, sigma)


def _machine(x, data, sigma, k):
    return cp.els.equivariant_local(data, k, padding="circular")(x, sigma)


def _projection(x, data, sigma):
    return cp.projection.smoothed_dist2(x, data, sigma), x - cp.denoisers.IdealDenoiser(data)(x, sigma)


SECOND_DELEGATIONS = [("check_log_density_step", _dtk_step), ("check_log_density_step_family", _dtk_family),
                      ("check_ideal_jacobian", _autograd_jacobian), ("check_ideal_jacobian", _exact_jacobian),
                      ("check_mixture_jacobian", _gmm_jacobian), ("check_circular_els", _machine),
                      ("check_smoothed_distance", _projection)]


@pytest.mark.parametrize("check,answer", SECOND_DELEGATIONS, ids=lambda v: getattr(v, "__name__", v))
def test_delegation_in_chapters_5_to_8_is_caught_by_the_source_and_at_run_time(check, answer, monkeypatch):
    checker = getattr(cp.exercises, check)
    verdict = checker(answer, quiet=True)
    assert not verdict and "companion's own implementation" in verdict.message, verdict.message
    monkeypatch.setattr(cp.exercises.core, "_source_uses", lambda *a: "")  # the run-time watch alone
    verdict = checker(answer, quiet=True)
    assert not verdict and "calls companion." in verdict.message, verdict.message
