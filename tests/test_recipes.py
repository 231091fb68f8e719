"""Tests of companion.recipes: every recipe runs for a few steps, the command line, the shipped
checkpoints match their recipes, and the recipes' data helpers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion import recipes, training


pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_unknown_config_key():
    with pytest.raises(ValueError, match="config"):
        recipes.RECIPES["digits_unet"]({"stepz": 2})


TINY = {
    "digits_unet": dict(steps=2, batch_size=8, base=8, mults=[1, 2]),
    "digits_unet_cond": dict(steps=2, batch_size=8, base=8, mults=[1, 2]),
    "digits_resnet": dict(steps=2, batch_size=8, width=8, depth=2),
    "digits_classifier": dict(steps=2, batch_size=8, width=4, features=8),
    "ring_mlp": dict(steps=2, batch_size=8, hidden=8, depth=1, n_data=64),
    "digits_unet_lik": dict(steps=2, batch_size=8, base=8, mults=[1, 2]),
    "patches_unet": dict(steps=2, batch_size=8, base=8, mults=[1, 2], n_train=64),
    "digits16_resnet": dict(steps=2, batch_size=8, width=8, depth=2, n_train=16),
}
TINY.update({name: dict(steps=2, batch_size=4, base=2, levels=2, convs=1, size=8)  # Chapter 7's zoo
             for name in recipes.RECIPES if name.startswith("gahb_")})


def test_every_recipe_has_a_tiny_config():
    assert set(TINY) == set(recipes.RECIPES) == set(recipes.CONFIGS)


@pytest.mark.parametrize("name", sorted(TINY))
def test_recipe_runs_saves_and_reloads(name, tmp_path):
    model = recipes.RECIPES[name](TINY[name], progress=False)
    path = training.save(model, tmp_path / f"{name}.pt", name, model.config)
    raw = torch.load(path, weights_only=True)
    assert raw["recipe"] == name and raw["config"]["steps"] == 2 and "final_loss" in raw["metrics"]
    from companion import __version__
    assert raw["version"] == __version__
    loaded = training.load(path, device="cpu")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.checkpoint["recipe"] == name
    x = torch.randn(4, 1, 8, 8)
    model = model.cpu()
    with torch.no_grad():
        if name == "ring_mlp":
            x = torch.randn(4, 2)
            torch.testing.assert_close(loaded(x, 0.7), model(x, 0.7))
        elif name == "digits_classifier":
            torch.testing.assert_close(loaded(x), model(x))
            torch.testing.assert_close(loaded.features(x), model.features(x))
        else:
            labels = torch.tensor([0, 1, 2, 10]) if name == "digits_unet_cond" else None
            torch.testing.assert_close(loaded(x, 0.7, labels), model(x, 0.7, labels))


def test_command_line(tmp_path, capsys):
    out = recipes.main(["digits_classifier", "--steps", "2", "--out", str(tmp_path / "c.pt"), "--quiet"])
    assert out.exists() and "digits_classifier" in capsys.readouterr().out
    assert torch.load(out, weights_only=True)["config"]["steps"] == 2


@pytest.mark.parametrize("module", ["companion.recipes", "companion.training"])  # the second: the old name
def test_the_command(module, tmp_path):
    out = tmp_path / "c.pt"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", module, "digits_classifier", "--steps", "2", "--out", str(out),
                          "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "digits_classifier" in run.stdout and training.load(out).checkpoint["config"]["steps"] == 2


def test_shipped_checkpoints_are_small_and_made_by_their_recipes():
    sizes = {name: (training.CHECKPOINT_DIR / f"{name}.pt").stat().st_size for name in recipes.RECIPES}
    assert all(s <= 2_000_000 for s in sizes.values()), sizes
    assert sum(sizes.values()) <= 20_000_000
    for name in recipes.RECIPES:
        raw = torch.load(training.CHECKPOINT_DIR / f"{name}.pt", weights_only=True)
        assert raw["recipe"] == name and raw["config"] == recipes.CONFIGS[name], name
        assert training.load(name).checkpoint["recipe"] == name  # loads by its recipe's name


def test_shipped_classifier_accuracy_on_the_held_out_digits():
    from companion import data

    clf = training.load("digits_classifier", device="cpu")
    images, labels = data.digits()
    _, held_out = recipes.digits_split()
    acc = training.accuracy(clf, images[held_out], labels[held_out])
    assert acc >= 0.95
    assert acc == pytest.approx(clf.checkpoint["metrics"]["heldout_accuracy"])


def test_digits16_are_the_upsampled_first_digits():
    from companion import data

    imgs, labels = recipes.digits16(16, 10)
    small, small_labels = data.digits()
    assert imgs.shape == (10, 1, 16, 16) and torch.equal(labels, small_labels[:10])
    assert imgs.min() >= -1 and imgs.max() <= 1
    # bilinear upsampling by 2 (align_corners=False): interior pixels mix the 2×2 nearest with weights 9/16, 3/16, 1/16
    x = small[:10]
    want = (9 * x[..., 1, 1] + 3 * x[..., 1, 2] + 3 * x[..., 2, 1] + x[..., 2, 2]) / 16
    torch.testing.assert_close(imgs[..., 3, 3], want)
    with pytest.raises(ValueError, match="n_train"):
        recipes.digits16(16, 5000)
