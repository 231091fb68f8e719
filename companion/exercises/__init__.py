"""Checkers for the book's coding exercises.

A checker takes the student's function, runs it and the tested reference on random inputs, and
prints a verdict that says what went wrong (an exception, a wrong shape, wrong values and where).
All checkers are built on :func:`compare`; each chapter's checkers live in their own module here
and are re-exported, so a notebook calls e.g. ``cp.exercises.check_vp_coefficients(my_fn)``.
"""
from .core import Verdict, compare
from .forward import check_vp_coefficients
from .els import check_local_weights
from .fokker import check_reverse_drift
from .projection import check_gradient_estimation
from .score import check_ddpm_step, check_ideal_denoiser, check_sampler_step
from .likelihood import check_divergence
from .density import check_log_density_step
from .gahb import check_ideal_jacobian
from .density import check_log_density_step_family
from .els import check_circular_els
from .gahb import check_mixture_jacobian
from .projection import check_smoothed_distance
from .forward import check_vp_mixture_log_prob
from .fokker import check_reverse_sampler
from .score import check_mixture_denoiser
from .likelihood import check_ode_log_likelihood

__all__ = ["Verdict", "compare", "check_vp_coefficients", "check_reverse_drift", "check_gradient_estimation",
           "check_ideal_denoiser", "check_sampler_step", "check_local_weights",
           "check_ddpm_step", "check_divergence", "check_log_density_step", "check_ideal_jacobian"]
__all__ += ["check_log_density_step_family", "check_circular_els", "check_mixture_jacobian", "check_smoothed_distance"]
__all__ += ["check_vp_mixture_log_prob", "check_reverse_sampler", "check_mixture_denoiser", "check_ode_log_likelihood"]
