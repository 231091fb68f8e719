import pytest
import torch

import companion as cp


@pytest.mark.parametrize("name", cp.data.TOY_2D)
def test_toy_2d_shapes_and_determinism(name):
    a = cp.data.toy_2d(name, 500, generator=torch.Generator().manual_seed(1))
    b = cp.data.toy_2d(name, 500, generator=torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert a.abs().max() < 8


def test_toy_mixture_matches_ring_moments():
    x = cp.data.toy_2d("mixture", 20000, generator=torch.Generator().manual_seed(0)).double()
    radius = x.norm(dim=1)
    assert abs(radius.mean().item() - 4.0) < 0.05  # points sit on the circle of radius 4
    assert x.mean(0).abs().max() < 0.1


def test_checkerboard_only_black_squares():
    x = cp.data.toy_2d("checkerboard", 2000, generator=torch.Generator().manual_seed(0))
    cell = torch.floor((x + 4) / 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()


def test_toy_bad_inputs():
    with pytest.raises(ValueError, match="mixture"):
        cp.data.toy_2d("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        cp.data.toy_2d("moons", 0)


def test_digits():
    x, y = cp.data.digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert x.min() == -1 and x.max() == 1 and y.dtype == torch.long
    assert set(y.tolist()) == set(range(10))
    x[0] = 5.0  # a copy: the cache is not modified
    assert cp.data.digits()[0].max() == 1


def test_image_set_bad_name_and_offline_hint(monkeypatch):
    with pytest.raises(ValueError, match="mnist"):
        cp.data.image_set("imagenet")
    _hide_torchvision(monkeypatch)
    with pytest.raises(ImportError, match="digits"):
        cp.data.image_set("mnist")


def test_image_set_reads_torchvision_idx_files_without_torchvision(monkeypatch, tmp_path):
    """MNIST in torchvision's raw layout is read by the package itself: no torchvision, no download."""
    from test_notebooks import write_tiny_mnist

    write_tiny_mnist(tmp_path, n=6)
    _hide_torchvision(monkeypatch)
    images, labels = cp.data.image_set("mnist", n=4, size=32, train=False, root=tmp_path)
    assert images.shape == (4, 1, 32, 32) and labels.shape == (4,) and labels.dtype == torch.long
    raw = tmp_path / "MNIST" / "raw"
    pixels = torch.frombuffer(bytearray((raw / "t10k-images-idx3-ubyte").read_bytes()[16:]), dtype=torch.uint8)
    torch.testing.assert_close(images[:, 0, 2:30, 2:30], pixels.reshape(6, 28, 28)[:4].float() / 127.5 - 1)
    assert (images[:, :, :2] == -1).all()                              # padded with the background
    assert labels.tolist() == list((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:12])
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))   # float32: not ours
    with pytest.raises(ValueError, match="idx"):
        cp.data.image_set("mnist", root=tmp_path)
    with pytest.raises(ImportError, match="digits"):                   # absent files: a download
        cp.data.image_set("fashion_mnist", root=tmp_path)


def test_image_set_without_network_names_the_offline_alternative(monkeypatch, tmp_path):
    """A download that fails (no network) is reported with the offline alternatives."""
    import sys
    import types
    import urllib.error

    def offline(**kwargs):
        raise urllib.error.URLError("no network")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=offline, FashionMNIST=offline, CIFAR10=offline)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    with pytest.raises(RuntimeError, match=r"Offline: copy .*cp\.data\.digits\(\)"):
        cp.data.image_set("mnist", root=tmp_path)


def _hide_torchvision(monkeypatch):
    """Make ``import torchvision`` fail for the rest of the test."""
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name == "torchvision":
            raise ImportError("no torchvision")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
