"""The package's one device rule: a model or machine runs on the device of its input.

A chapter never has to remember where a checkpoint was loaded. No GPU is needed: the ``meta``
device (tensors with shapes and dtypes but no data) stands in for a non-CPU device, and
``runtime.device`` is patched to report it, as ``cuda`` would be reported on a GPU machine.
"""
import pytest
import torch

import companion as cp
from companion import metrics, nets, runtime, samplers, training

pytestmark = pytest.mark.usefixtures("one_thread")

META = torch.device("meta")


@pytest.fixture
def gpu_machine(monkeypatch):
    """A machine whose best device is not the CPU (``meta`` plays the GPU)."""
    monkeypatch.setattr(runtime, "device", lambda: META)


@pytest.mark.parametrize("name", ["digits_unet", "digits_resnet", "ring_mlp"])
def test_chapter3_idiom_on_a_gpu_machine(gpu_machine, name):
    """Chapter 3's crash on CUDA: load a checkpoint, call it on CPU inputs, sample a few steps."""
    model = training.load(name)
    shape = (3, 2) if name == "ring_mlp" else (3, 1, 8, 8)
    x = torch.randn(shape)
    out = model(x, 0.5)
    assert out.device == x.device and out.shape == x.shape and torch.isfinite(out).all()
    x0 = samplers.sample(model, samplers.loglinear(3, 0.05, 5.0), 5.0 * x, mu=0.5,
                         generator=torch.Generator().manual_seed(0))
    assert x0.device == x.device and torch.isfinite(x0).all()


@pytest.mark.parametrize("name", ["digits_unet", "digits_unet_cond"])
def test_denoiser_follows_a_non_cpu_input(name):
    """Loaded on the CPU, called on another device: the model moves there and answers there."""
    model = training.load(name, device="cpu")
    x = torch.randn(4, 1, 8, 8, device=META)
    out = model(x, torch.full((4,), 0.3, device=META))
    assert out.device == META and out.shape == x.shape
    assert next(model.parameters()).device == META
    D = samplers.cfg(model, torch.tensor([1, 2, 3, 4]), 2.0) if model.n_classes else model
    x0, path = samplers.sample(D, samplers.loglinear(3, 0.05, 5.0), x, gamma=2.0, return_path=True)
    assert x0.device == META and path.shape == (4, 4, 1, 8, 8)


def test_load_device_argument():
    assert next(training.load("ring_mlp", device="meta").parameters()).device == META
    # default: the CPU; the model follows its inputs from there
    assert next(training.load("ring_mlp").parameters()).device == torch.device("cpu")


def test_denoiser_answers_in_the_dtype_of_its_input():
    model = training.load("digits_unet")
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = model(x, 0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), model(x.float(), 0.5), rtol=1e-4, atol=1e-5)


def test_classifier_features_follow_their_input():
    """The digits classifier behind the Fréchet distance of Chapters 3 and 8."""
    metrics.digits_classifier.cache_clear()
    try:
        images = torch.zeros(5, 1, 8, 8, device=META)
        feats = metrics.digits_features(images, batch_size=2)
        assert feats.device == META and feats.shape[0] == 5
        clf = nets.DigitsClassifier(width=4, features=6)
        assert clf(images).device == META and clf.features(images).shape == (5, 6)
    finally:
        metrics.digits_classifier.cache_clear()   # the cached model now lives on meta
    assert metrics.digits_features(torch.zeros(2, 1, 8, 8)).device == torch.device("cpu")


def test_every_module_in_modules_imports():
    for name in cp.MODULES:
        assert getattr(cp, name).__name__ == f"companion.{name}"


def test_modules_lists_exactly_the_modules_on_disk():
    """``MODULES`` drops names whose file is missing and misses no public module."""
    from pathlib import Path
    import pkgutil

    here = Path(cp.__file__).parent
    on_disk = {m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")}
    assert set(cp.MODULES) == on_disk
    assert "likelihood" not in dir(cp) or (here / "likelihood.py").is_file()


def test_machines_follow_their_input():
    """Ground-truth machines (exact mixture, ideal denoiser) compute on the device of their input."""
    ring = cp.gmm.ring()
    x = torch.zeros(6, 2, device=META)
    for out in (ring.score(x, 0.5), ring.denoise(x, 0.5), ring.log_prob(x, 0.5)):
        assert out.device == META and out.shape[0] == 6
    score = cp.reverse.mixture_score(cp.gmm.ring(), cp.sde.VP())
    assert score(x, 0.3).device == META
    D = cp.denoisers.IdealDenoiser(torch.randn(20, 1, 4, 4), labels=torch.arange(20) % 3)
    out = D(torch.zeros(3, 1, 4, 4, device=META), 0.2, torch.tensor([0, 1, 2]))
    assert out.device == META and out.shape == (3, 1, 4, 4)
