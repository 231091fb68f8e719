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
