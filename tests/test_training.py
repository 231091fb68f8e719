"""Tests of companion.training: the DSM loss and loop, save/load of checkpoints (recipes: test_recipes.py)."""
import math
import os

import pytest
import torch
from torch import nn

from companion import nets, training
from companion.denoisers import TARGETS, target_from_x0


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp_denoiser(seed=0, n_classes=None, target="v"):
    torch.manual_seed(seed)
    return nets.Denoiser(nets.MLP(dim=2, hidden=32, depth=2, n_classes=n_classes), target=target,
                         sigma_data=1.0, n_classes=n_classes)


@pytest.mark.parametrize("target", TARGETS)
def test_dsm_loss_is_the_mse_in_the_targets_space(target):
    torch.manual_seed(1)
    D = _mlp_denoiser(target=target)
    x0, eps = torch.randn(16, 2), torch.randn(16, 2)
    sigma = torch.exp(torch.randn(16))
    x = x0 + sigma[:, None] * eps
    x0_hat = D(x, sigma)
    pred = target_from_x0(x0_hat, target, x, sigma, 1.0)  # the raw network's output, in target space
    true = target_from_x0(x0, target, x, sigma, 1.0)
    expected = ((pred - true) ** 2).mean()
    torch.testing.assert_close(training.dsm_loss(D, x0, sigma, eps), expected, rtol=1e-4, atol=1e-6)


def test_loss_decreases_on_a_tiny_problem():
    data = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    res = training.train(_mlp_denoiser(), data, 200, batch_size=64, lr=3e-3, progress=False,
                         generator=torch.Generator().manual_seed(0))
    assert len(res.losses) == 200
    first, last = sum(res.losses[:30]) / 30, sum(res.losses[-30:]) / 30
    assert last < 0.5 * first
    # the trained denoiser pulls a slightly noisy point towards its data point
    out = res.ema_model(torch.tensor([[1.8, 0.1]]), 0.1)
    assert torch.linalg.norm(out - data[1]) < 0.15


def test_training_is_deterministic_with_a_generator():
    data = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    runs = [training.train(_mlp_denoiser(seed=5), data, 5, batch_size=8, progress=False,
                           generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    for a, b in zip(runs[0].ema_model.parameters(), runs[1].ema_model.parameters()):
        assert torch.equal(a, b)


def test_ema():
    data = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    res = training.train(_mlp_denoiser(), data, 20, batch_size=8, ema=0.0, progress=False)
    for a, b in zip(res.model.parameters(), res.ema_model.parameters()):
        assert torch.equal(a, b)
    res = training.train(_mlp_denoiser(), data, 20, batch_size=8, ema=0.99, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(res.model.parameters(), res.ema_model.parameters()))
    assert not res.ema_model.training and not any(p.requires_grad for p in res.ema_model.parameters())


class _LabelSpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.kwargs = {"n_classes": 3}
        self.lin = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x_in, c_noise, labels=None):
        self.seen.append(labels.clone())
        return self.lin(x_in)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_label_dropout(dropout):
    spy = _LabelSpy()
    D = nets.Denoiser(spy, n_classes=3)
    data = torch.randn(30, 2)
    labels = torch.arange(30) % 3
    training.train(D, data, 20, batch_size=50, labels=labels, label_dropout=dropout, progress=False,
                   generator=torch.Generator().manual_seed(0))
    seen = torch.cat(spy.seen)
    null = (seen == 3).float().mean().item()
    assert abs(null - dropout) < 0.05
    assert set(seen.unique().tolist()) <= {0, 1, 2, 3} and (seen < 3).any()


def test_sample_sigma():
    g = torch.Generator().manual_seed(0)
    s = training.sample_sigma(20000, "lognormal", g)
    assert abs(s.log().mean().item() + 1.2) < 0.03 and abs(s.log().std().item() - 1.2) < 0.03
    s = training.sample_sigma(20000, "loguniform", g, sigma_min=0.01, sigma_max=10.0)
    assert s.min() >= 0.01 and s.max() <= 10.0
    assert abs(s.log().mean().item() - 0.5 * (math.log(0.01) + math.log(10.0))) < 0.05


def test_bad_inputs():
    D = _mlp_denoiser()
    data = torch.randn(10, 2)
    with pytest.raises(ValueError, match="data"):
        training.train(D, torch.zeros(0, 2), 1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        training.train(_mlp_denoiser(n_classes=3), data, 1, labels=torch.zeros(9, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        training.train(D, data, 1, labels=torch.zeros(10, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="labels"):
        training.train(_mlp_denoiser(n_classes=3), data, 1, labels=torch.full((10,), 3), progress=False)
    with pytest.raises(ValueError, match="sigma_sampler"):
        training.train(D, data, 1, sigma_sampler="uniform", progress=False)
    with pytest.raises(ValueError, match="target"):
        nets.Denoiser(nets.MLP(), target="velocity")
    with pytest.raises(ValueError, match="steps"):
        training.train(D, data, 0, progress=False)
    with pytest.raises(ValueError, match="label_dropout"):
        training.train(D, data, 1, label_dropout=1.5, progress=False)
    with pytest.raises(TypeError, match="Denoiser"):
        training.train(nets.MLP(), data, 1, progress=False)
    with pytest.raises(ValueError, match="labels are required"):
        training.train_classifier(nets.DigitsClassifier(), torch.zeros(4, 1, 8, 8), None, 1, progress=False)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = nets.DigitsClassifier(width=4, features=8)
    path = tmp_path / "m.pt"
    training.save(model, path, "digits_classifier", {"steps": 1})
    good = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        training.save(model, path, "digits_classifier", {"steps": 2})
    assert path.read_bytes() == good  # the old file is intact
    assert os.listdir(tmp_path) == ["m.pt"]  # and no temporary file is left behind
    with pytest.raises(OSError):
        training.save(model, tmp_path / "new.pt", "digits_classifier", {})
    assert os.listdir(tmp_path) == ["m.pt"]


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m companion.recipes digits_unet"):
        training.load("digits_unet")
    with pytest.raises(ValueError, match="name_or_path"):
        training.load("no_such_model")


@pytest.mark.parametrize("weight", TARGETS)
def test_dsm_loss_weight_of_another_target(weight):
    """weight= keeps the model's parameterisation and takes ω(σ) from another target."""
    from companion.denoisers import loss_weight

    torch.manual_seed(2)
    D = _mlp_denoiser(target="eps")
    x0, eps = torch.randn(16, 2), torch.randn(16, 2)
    sigma = torch.exp(torch.randn(16))
    err = ((D(x0 + sigma[:, None] * eps, sigma) - x0) ** 2).mean(1)
    expected = (loss_weight(weight, sigma, 1.0) * err).mean()
    torch.testing.assert_close(training.dsm_loss(D, x0, sigma, eps, weight=weight), expected, rtol=1e-4, atol=1e-6)
    if weight != "eps":
        assert not torch.allclose(training.dsm_loss(D, x0, sigma, eps, weight=weight), training.dsm_loss(D, x0, sigma, eps))
    with pytest.raises(ValueError, match="weight"):
        training.train(D, x0, steps=1, weight="velocity", progress=False)


def test_train_resumes_from_its_saved_state(tmp_path):
    """An interrupted run (20 of 30 steps) resumed from ``resume`` equals an uninterrupted one."""
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))

    def fresh():
        torch.manual_seed(0)
        return nets.Denoiser(nets.MLP(dim=2, hidden=16, depth=1))

    def run(model, steps, path):
        return training.train(model, data, steps, batch_size=16, generator=torch.Generator().manual_seed(1),
                              progress=False, resume=path, resume_every=7)

    whole = run(fresh(), 30, None)
    path = tmp_path / "state.pt"
    run(fresh(), 20, path)                         # "disconnect" after 20 steps
    resumed = run(fresh(), 30, path)
    assert resumed.losses == whole.losses
    for a, b in zip(resumed.ema_model.state_dict().values(), whole.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    again = run(fresh(), 30, path)                 # finished: nothing left to train
    assert again.losses == whole.losses and not list(tmp_path.glob(".*.tmp"))
