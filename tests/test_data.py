import pickle

import numpy as np
import pytest
import torch

from pibench.data import DATASETS, dataset_info, dataset_options, get_dataset, holdout_loaders, make_loaders


def test_registry_lists_every_dataset():
    assert DATASETS.names() == ["cifar10", "cifar100", "digits", "synthetic", "tinyimagenet"]
    with pytest.raises(KeyError, match="Known: cifar10"):
        get_dataset("mnist")


def test_digits_fixed_split_normalized():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = test[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    again = get_dataset("digits", "test")
    assert torch.equal(again[5][0], test[5][0]) and again[5][1] == test[5][1]
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1) < 0.05


def test_digits_upsampling_and_options():
    assert get_dataset("digits", "test", size=16)[0][0].shape == (1, 16, 16)
    assert dataset_options("digits", (1, 16, 16), 10) == {"size": 16}
    assert dataset_options("digits", (1, 8, 8), 10) == {}
    with pytest.raises(ValueError, match="3 channels and 100 classes"):
        dataset_options("cifar100", (1, 8, 8), 10)


def test_synthetic_is_deterministic_and_not_constant():
    a = get_dataset("synthetic", "train", shape=(1, 8, 8), samples=300, seed=3)
    b = get_dataset("synthetic", "train", shape=(1, 8, 8), samples=300, seed=3)
    assert torch.equal(a[7][0], b[7][0])
    labels = [a[i][1] for i in range(len(a))]
    assert len(set(labels)) >= 5
    test = get_dataset("synthetic", "test", shape=(1, 8, 8), samples=50, seed=3)
    assert not torch.equal(test[0][0], a[0][0])


def test_loaders_are_seeded():
    first = next(iter(make_loaders("digits", batch_size=16, seed=1)[0]))[1]
    second = next(iter(make_loaders("digits", batch_size=16, seed=1)[0]))[1]
    assert torch.equal(first, second)


def _write_batch(path, n, label_key, classes):
    rng = np.random.default_rng(0)
    data = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, classes, n))}
    path.write_bytes(pickle.dumps(data))


def _fake_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 4, b"labels", 10)
    _write_batch(folder / "test_batch", 3, b"labels", 10)


def test_cifar10_from_a_local_folder_with_augmentation(tmp_path):
    _fake_cifar10(tmp_path)
    train = get_dataset("cifar10", "train", str(tmp_path))
    test = get_dataset("cifar10", "test", str(tmp_path))
    assert (len(train), len(test)) == (20, 3)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert train.augment is not None and test.augment is None


def test_cifar100_from_a_local_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 5, b"fine_labels", 100)
    _write_batch(folder / "test", 2, b"fine_labels", 100)
    assert len(get_dataset("cifar100", "train", str(tmp_path))) == 5
    assert get_dataset("cifar100", "test", str(tmp_path))[1][0].shape == (3, 32, 32)


def test_cifar_missing_folder_names_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py/data_batch_1.*test_batch"):
        get_dataset("cifar10", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python/train"):
        get_dataset("cifar100", "test", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        get_dataset("cifar10", "test")


def test_cifar_malformed_file(tmp_path):
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(FileNotFoundError, match="not a CIFAR python batch"):
        get_dataset("cifar10", "test", str(tmp_path))


def test_cifar_refuses_code_in_pickles(tmp_path):
    _fake_cifar10(tmp_path)
    evil = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print})
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(FileNotFoundError, match="refusing to load builtins.print"):
        get_dataset("cifar10", "test", str(tmp_path))


def _fake_tiny(root, wnids=("n01", "n02")):
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for k, w in enumerate(wnids):
        images = base / "train" / w / "images"
        images.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (k * 100, i * 50, 7)).save(images / f"{w}_{i}.JPEG")
        Image.new("RGB", (64, 64), (k * 100, 0, 0)).save(base / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t64\t64")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tinyimagenet_from_a_local_folder(tmp_path):
    _fake_tiny(tmp_path)
    train = get_dataset("tinyimagenet", "train", str(tmp_path))
    test = get_dataset("tinyimagenet", "test", str(tmp_path))
    assert (len(train), len(test)) == (4, 2)
    x, y = test[1]
    assert x.shape == (3, 64, 64) and y == 1
    assert dataset_info("tinyimagenet").input_shape == (3, 64, 64)


def test_tinyimagenet_missing_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="wnids.txt.*val_annotations.txt"):
        get_dataset("tinyimagenet", "train", str(tmp_path))
    base = _fake_tiny(tmp_path)
    (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="val_1.JPEG is listed"):
        get_dataset("tinyimagenet", "test", str(tmp_path))
    for f in (base / "train" / "n02" / "images").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no images in"):
        get_dataset("tinyimagenet", "train", str(tmp_path))


def test_holdout_splits_the_training_set_never_the_test_set():
    """DeepReDuce chooses on a held-out part of the training set (README: reported accuracy)."""
    train_loader, _ = make_loaders("synthetic", batch_size=32, seed=0, train_subset=200, shape=(3, 8, 8))
    plain = get_dataset("synthetic", "train", augment=False, shape=(3, 8, 8))
    fit_loader, held = holdout_loaders(train_loader, plain, 0.1, seed=0)
    kept, held_idx = fit_loader.dataset.indices, held.dataset.indices
    assert (len(kept), len(held_idx)) == (180, 20) and not set(kept) & set(held_idx)
    assert set(kept) | set(held_idx) == set(range(200))  # within the training subset
    assert held_idx == holdout_loaders(train_loader, plain, 0.1, seed=0)[1].dataset.indices  # seeded
    assert held.dataset.dataset is plain and fit_loader.generator is not None
    with pytest.raises(ValueError, match="between 0 and 1"):
        holdout_loaders(train_loader, plain, 0.0, seed=0)
