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


# ------------------------------------------ the second coding exercise of Chapters 1–4 (issue 17)
import math  # noqa: E402

import pytest  # noqa: E402

from companion import likelihood as L  # noqa: E402
from companion.exercises import fokker, forward, likelihood as lik_ex, score as score_ex  # noqa: E402


def mixture_log_prob(x, t, means, stds, weights, beta_min, beta_max, scale_means=True, var_kind="s2(tau2+sig2)",
                     dim_in_norm=True, use_weights=True, naive=False):
    """Chapter 1's answer, written as a student would; the keywords make the typical mistakes."""
    s, sig = vp_coefficients(t, beta_min, beta_max)
    var = {"s2(tau2+sig2)": s**2 * (stds**2 + sig**2), "tau2+s2sig2": stds**2 + s**2 * sig**2,
           "s(tau+sig)": (s * (stds + sig)) ** 2}[var_kind]
    d2 = ((x[:, None] - (s if scale_means else 1.0) * means[None]) ** 2).sum(-1)
    logw = torch.log(weights) if use_weights else 0.0
    terms = logw - d2 / (2 * var) - 0.5 * (x.shape[1] if dim_in_norm else 1) * torch.log(2 * math.pi * var)
    return terms.exp().sum(1).log() if naive else torch.logsumexp(terms, 1)


def reverse_sampler(score, process, x1, n_steps, lam, seed, sqrt_dt=True, sign=1.0, at_end=False, lam_noise=True):
    """Chapter 2's answer (with the student's `_reverse_drift`); the keywords make the typical mistakes."""
    gen, x = torch.Generator().manual_seed(seed), x1
    ts = torch.linspace(1.0, 1e-3, n_steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        u = b if at_end else a
        x = x + _reverse_drift(x, u, process, score, lam) * sign * (b - a).item()
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        x = x + (lam if lam_noise else 1.0) * process.g(u).item() * ((a - b).sqrt().item() if sqrt_dt else 1) * z
    return x


def mixture_denoiser(x, sigma, means, stds, weights, resp_var=True, shrink_tau=True, log_det=True,
                     use_weights=True, naive=False):
    """Chapter 3's answer, written out; the keywords make the typical mistakes."""
    var = stds**2 + sigma**2
    rvar = var if resp_var else torch.full_like(var, sigma**2)
    logits = -((x[:, None] - means[None]) ** 2).sum(-1) / (2 * rvar)
    logits = logits + (torch.log(weights) if use_weights else 0) - (x.shape[1] / 2 * torch.log(rvar) if log_det else 0)
    r = logits.exp() / logits.exp().sum(1, keepdim=True) if naive else torch.softmax(logits, 1)
    gain = (stds**2 if shrink_tau else torch.full_like(stds, sigma**2)) / var
    return (r[:, :, None] * (means[None] + gain[None, :, None] * (x[:, None] - means[None]))).sum(1)


def my_divergence(f, x):
    x = x.detach().requires_grad_(True)
    y = f(x).flatten(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(y.shape[1]):
        (grad,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)
        total = total + grad.flatten(1)[:, i]
    return total


def ode_log_likelihood(D, x, sigma_min, sigma_max, steps, sign=1.0, div_of_b=True, prior_norm=True, var_sq=True):
    """Chapter 4's answer (with the student's divergence); the keywords make the typical mistakes."""
    d = x[0].numel()
    s = torch.linspace(math.log(sigma_min), math.log(sigma_max), steps + 1, dtype=torch.float64)
    h, ell = (s[1] - s[0]).item(), torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(steps):
        sigma = math.exp(s[k].item())
        tr = my_divergence(lambda z: D(z, sigma), x)
        ell = ell + h * ((d - tr) if div_of_b else tr)
        x = x + h * (x - D(x, sigma))
    var = sigma_max**2 if var_sq else sigma_max
    return sign * ell - 0.5 * (x**2).sum(1) / var - (d / 2 * math.log(2 * math.pi * var) if prior_norm else 0)


NEW_CHECKERS = {cp.exercises.check_vp_mixture_log_prob: mixture_log_prob,
                cp.exercises.check_reverse_sampler: reverse_sampler,
                cp.exercises.check_mixture_denoiser: mixture_denoiser,
                cp.exercises.check_ode_log_likelihood: ode_log_likelihood}


@pytest.mark.parametrize("checker", NEW_CHECKERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])  # the public test and the hidden ones of the assignment
def test_new_checkers_accept_a_written_out_answer(checker, seed):
    assert checker(NEW_CHECKERS[checker], seed=seed, quiet=True)


def test_written_out_references_of_the_mistakes_agree_with_the_companion():
    """With no mistake switched on, each checker's written-out formula is its (companion) reference, so each
    named mistake differs from the reference by that one mistake."""
    g = torch.Generator().manual_seed(5)
    means, stds = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.rand(3, generator=g, dtype=torch.float64)
    w, x = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), 2 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.tensor(0.2, dtype=torch.float64)
    assert torch.allclose(forward._mixture_written(x, t, means, stds, w, 0.1, 20.0),
                          forward._mixture_log_prob(x, t, means, stds, w, 0.1, 20.0), rtol=1e-12)
    assert torch.allclose(score_ex._denoiser_written(x, 0.3, means, stds, w),
                          score_ex._mixture_denoiser(x, 0.3, means, stds, w), rtol=1e-12)
    gmm = cp.gmm.GaussianMixture(means, stds, w)
    for proc, lam in ((cp.sde.VP(), 1.0), (cp.sde.VE(0.01, 10.0), 0.0), (cp.sde.VP(), 0.5)):
        args = (cp.reverse.mixture_score(gmm, proc), proc, x, 12, lam, 3)
        assert torch.equal(fokker._em(*args), fokker._sampler_reference(*args))
    assert torch.allclose(lik_ex._ode(gmm.denoise, x, 0.01, 20.0, 7), lik_ex._ode_reference(gmm.denoise, x, 0.01, 20.0, 7),
                          rtol=1e-12)


NEW_MISTAKES = {  # name: (checker, wrong answer, words the diagnosis must contain)
    "ch1 means not scaled": (cp.exercises.check_vp_mixture_log_prob,
                             lambda *a: mixture_log_prob(*a, scale_means=False), "means are not scaled"),
    "ch1 only the noise scaled": (cp.exercises.check_vp_mixture_log_prob,
                                  lambda *a: mixture_log_prob(*a, var_kind="tau2+s2sig2"), "only the noise is scaled"),
    "ch1 stds added": (cp.exercises.check_vp_mixture_log_prob,
                       lambda *a: mixture_log_prob(*a, var_kind="s(tau+sig)"), "instead of variances"),
    "ch1 no D in the normaliser": (cp.exercises.check_vp_mixture_log_prob,
                                   lambda *a: mixture_log_prob(*a, dim_in_norm=False), "lacks the factor d"),
    "ch1 weights missing": (cp.exercises.check_vp_mixture_log_prob,
                            lambda *a: mixture_log_prob(*a, use_weights=False), "weights are missing"),
    "ch1 log(sum(exp))": (cp.exercises.check_vp_mixture_log_prob,
                          lambda *a: mixture_log_prob(*a, naive=True), "logsumexp"),
    "ch1 float32": (cp.exercises.check_vp_mixture_log_prob,
                    lambda x, t, *a: mixture_log_prob(x.float(), t.float(), *[v.float() if torch.is_tensor(v) else v
                                                                               for v in a]), "float32"),
    "ch2 no sqrt(dt)": (cp.exercises.check_reverse_sampler, lambda *a: reverse_sampler(*a, sqrt_dt=False), "√|Δt|"),
    "ch2 dt > 0": (cp.exercises.check_reverse_sampler, lambda *a: reverse_sampler(*a, sign=-1.0), "negative"),
    "ch2 end of the step": (cp.exercises.check_reverse_sampler, lambda *a: reverse_sampler(*a, at_end=True),
                            "start t_k"),
    "ch2 noise without λ": (cp.exercises.check_reverse_sampler, lambda *a: reverse_sampler(*a, lam_noise=False),
                            "not multiplied by λ"),
    "ch3 responsibilities with σ² only": (cp.exercises.check_mixture_denoiser,
                                          lambda *a: mixture_denoiser(*a, resp_var=False), "noise variance σ² alone"),
    "ch3 shrinkage upside down": (cp.exercises.check_mixture_denoiser,
                                  lambda *a: mixture_denoiser(*a, shrink_tau=False), "upside down"),
    "ch3 no log-det": (cp.exercises.check_mixture_denoiser, lambda *a: mixture_denoiser(*a, log_det=False),
                       "normaliser"),
    "ch3 weights missing": (cp.exercises.check_mixture_denoiser, lambda *a: mixture_denoiser(*a, use_weights=False),
                            "weights are missing"),
    "ch3 exp by hand": (cp.exercises.check_mixture_denoiser, lambda *a: mixture_denoiser(*a, naive=True), "softmax"),
    "ch4 sign": (cp.exercises.check_ode_log_likelihood, lambda *a: ode_log_likelihood(*a, sign=-1.0), "wrong sign"),
    "ch4 divergence of D": (cp.exercises.check_ode_log_likelihood,
                            lambda *a: ode_log_likelihood(*a, div_of_b=False), "d − tr ∂D/∂x"),
    "ch4 prior normaliser": (cp.exercises.check_ode_log_likelihood,
                             lambda *a: ode_log_likelihood(*a, prior_norm=False), "normaliser"),
    "ch4 prior variance": (cp.exercises.check_ode_log_likelihood, lambda *a: ode_log_likelihood(*a, var_sq=False),
                           "variance σ_max²"),
}


@pytest.mark.parametrize("mistake", NEW_MISTAKES, ids=str)
def test_new_checkers_diagnose_the_typical_mistakes(mistake):
    checker, wrong, words = NEW_MISTAKES[mistake]
    verdict = checker(wrong, quiet=True)
    assert not verdict, mistake
    assert words in verdict.message, verdict.message


def _ch1_gmm(x, t, means, stds, weights, a, b):
    return cp.reverse.mixture_marginal(cp.gmm.GaussianMixture(means, stds, weights), cp.sde.VP(a, b), t).log_prob(x)


def _ch2_integrate(score, process, x1, n, lam, seed):
    return cp.reverse.integrate(score, process, x1, n, lam=lam, generator=torch.Generator().manual_seed(seed))


def _ch3_tweedie_with_the_companion_score(x, sigma, means, stds, weights):
    return x + sigma**2 * cp.gmm.GaussianMixture(means, stds, weights).score(x, sigma)


def _ch4_companion(D, x, a, b, n):
    return L.pf_ode_log_likelihood(D, x, a, b, steps=n, method="euler").log_prob


def _ch4_companion_divergence(D, x, a, b, n):
    return ode_log_likelihood(D, x, a, b, n) * 0 + _ch4_companion(D, x, a, b, n)


def _ch4_exact_divergence(f, x):
    return L.exact_divergence(f, x)


def _ch4_quadratic_forms(f, x):
    from companion.likelihood import jacobian_quadratic_forms as jq  # an alias, made inside: the watch sees it
    eye = torch.eye(x[0].numel(), dtype=x.dtype).reshape(-1, 1, *x.shape[1:]).expand(-1, *x.shape)
    return jq(f, x, eye)[0].sum(0)


NEW_DELEGATIONS = [(cp.exercises.check_vp_mixture_log_prob, _ch1_gmm),
                   (cp.exercises.check_reverse_sampler, _ch2_integrate),
                   (cp.exercises.check_reverse_sampler, cp.reverse.integrate),
                   (cp.exercises.check_mixture_denoiser, _ch3_tweedie_with_the_companion_score),
                   (cp.exercises.check_ode_log_likelihood, _ch4_companion),
                   (cp.exercises.check_ode_log_likelihood, _ch4_companion_divergence),
                   (cp.exercises.check_divergence, _ch4_exact_divergence),
                   (cp.exercises.check_divergence, _ch4_quadratic_forms),
                   (cp.exercises.check_divergence, L.hutchinson_divergence)]


@pytest.mark.parametrize("checker,answer", NEW_DELEGATIONS, ids=lambda v: getattr(v, "__name__", ""))
def test_new_checkers_reject_delegation(checker, answer):
    verdict = checker(answer, quiet=True)
    assert not verdict and "companion's own implementation" in verdict.message, verdict.message


def test_divergence_checker_accepts_a_full_jacobian_from_torch_func():
    """Chosen for issue 17: `forbid` covers the companion only; torch's own Jacobian is a fair (costly) answer."""
    def jac(f, x):
        J = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0].flatten()))(x)
        return J.reshape(x.shape[0], x[0].numel(), -1).diagonal(dim1=1, dim2=2).sum(1)
    assert cp.exercises.check_divergence(jac, quiet=True)
    assert cp.exercises.check_divergence(my_divergence, quiet=True)


def test_mistakes_mechanism_names_only_a_matching_mistake():
    case = [((torch.arange(3.0, dtype=torch.float64),), {})]
    ref = lambda x: 3 * x  # noqa: E731
    slips = [("forgot the 3.", lambda x: x), ("cube instead of triple.", lambda x: x**3)]
    v = cp.exercises.compare(lambda x: x**3, ref, case, quiet=True, mistakes=slips)
    assert not v and "Likely cause: cube instead of triple." in v.message and "forgot" not in v.message
    v = cp.exercises.compare(lambda x: x + 1, ref, case, quiet=True, mistakes=slips)
    assert not v and "Likely cause" not in v.message


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
        "ito": "Itô correction has the wrong sign", "norm sign": "‖score‖² term has the wrong sign",
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


def test_noisy_points_are_data_points_plus_scaled_noise():
    from companion.exercises.core import noisy_points

    x, data = noisy_points(torch.Generator().manual_seed(0), 7, 5, 3, scale=0.0)
    assert x.shape == (5, 3) and data.shape == (7, 3) and x.dtype == torch.float64
    assert torch.cdist(x, data).min(1).values.max() == 0           # every x is a data point
    x, data = noisy_points(torch.Generator().manual_seed(0), 7, 5, 3, scale=1e-3)
    assert 0 < torch.cdist(x, data).min(1).values.max() < 1e-2
    again = noisy_points(torch.Generator().manual_seed(0), 7, 5, 3, scale=1e-3)
    assert torch.equal(again[0], x) and torch.equal(again[1], data)
