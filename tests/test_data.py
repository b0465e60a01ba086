import numpy as np
import pytest

from antigrok.training.data import MNIST_RAW_FILES, DataError, prepare_mnist, stratified_subset
from conftest import SHARED_DATA, requires_mnist


def fake_labels(per_class=500, classes=10, seed=0):
    labels = np.repeat(np.arange(classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def test_subset_has_exactly_100_per_class():
    labels = fake_labels()
    index = stratified_subset(labels, 1000, seed=0)
    assert len(index) == len(set(index.tolist())) == 1000
    assert np.bincount(labels[index], minlength=10).tolist() == [100] * 10


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
    labels = fake_labels()
    first = stratified_subset(labels, 1000, seed=3)
    assert np.array_equal(first, stratified_subset(labels, 1000, seed=3))
    assert not np.array_equal(first, stratified_subset(labels, 1000, seed=4))


def test_subset_size_must_split_evenly_over_classes():
    with pytest.raises(DataError, match="multiple"):
        stratified_subset(fake_labels(), 1005, seed=0)


@requires_mnist
def test_prepare_mnist_from_offline_copy():
    dataset = prepare_mnist(SHARED_DATA, 1000, 0, download=False)
    assert dataset["x_train"].shape == (1000, 784)
    assert dataset["x_test"].shape == (10000, 784)
    assert float(dataset["x_train"].min()) >= 0.0 and float(dataset["x_train"].max()) <= 1.0
    assert np.bincount(dataset["y_train"].numpy(), minlength=10).tolist() == [100] * 10


def test_missing_mnist_names_the_raw_files_and_root(tmp_path):
    with pytest.raises(DataError) as error:
        prepare_mnist(tmp_path, 1000, 0, download=False)
    message = str(error.value)
    assert str(tmp_path) in message and "data.root" in message
    for name in MNIST_RAW_FILES:
        assert name in message
