"""companion: the tested code of the executable textbook on the theory of diffusion models.

One module per concept; ``import companion as cp`` then ``cp.sde``, ``cp.gmm``, ... (modules load
on first use). One noise convention everywhere: the variance-exploding variable
``x_sigma = x0 + sigma * eps``; a denoiser is ``D(x, sigma) -> x0_hat``, the noise prediction is
``(x - D) / sigma`` and the score is ``(D - x) / sigma**2``.
"""
import importlib
from pathlib import Path

__version__ = "0.1.0"

#: the package's modules, loaded lazily by attribute access (``cp.samplers``)
MODULES = (
    "runtime", "data", "sde", "gmm", "plotting", "widgets", "exercises",
    "fokker_planck", "reverse", "denoisers", "nets", "training", "samplers", "metrics",
    "likelihood", "els", "jacobian", "projection", "student", "density_tracking",
    "gahb",
    "colab",
    "recipes",
)

#: only those present on disk: a module named above whose file is not there yet is left out,
#: so ``dir(cp)`` and ``cp.MODULES`` never promise what cannot be imported
_HERE = Path(__file__).resolve().parent
MODULES = tuple(m for m in MODULES if (_HERE / f"{m}.py").is_file() or (_HERE / m / "__init__.py").is_file())

from . import runtime, plotting  # noqa: E402  (light, and the style applies at import)

plotting.use_style()


def __getattr__(name):
    if name in MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'companion' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(MODULES))


__all__ = ["__version__", "MODULES"]
