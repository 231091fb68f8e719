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
