import numpy as np
import pytest
import torch

from tunegap.data import (
    DATASETS,
    DeviceLoader,
    TensorData,
    load_dataset,
    load_mnist1d,
    register_dataset,
)


def test_mnist1d_is_generated_once_then_read_from_cache(data_dir):
    first = load_mnist1d(num_samples=1000, data_dir=data_dir)
    files = list(data_dir.glob("mnist1d-1000-*.npz"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = load_mnist1d(num_samples=1000, data_dir=data_dir)
    assert files[0].stat().st_mtime_ns == mtime
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    assert first.x_train.shape == (800, 1, 40) and first.x_test.shape == (200, 1, 40)
    assert first.x_train.dtype == torch.float32 and first.y_train.dtype == torch.int64
    assert set(first.y_train.tolist()) == set(range(10))
    assert not list(data_dir.glob("*.tmp*"))


def test_generation_arguments_change_the_cache_key(data_dir):
    a = load_mnist1d(num_samples=1000, seed=1, data_dir=data_dir)
    b = load_mnist1d(num_samples=1000, seed=2, data_dir=data_dir)
    assert not torch.equal(a.x_train, b.x_train)


def test_loader_covers_every_sample_once_per_epoch_with_a_smaller_last_batch():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(10)
    loader = DeviceLoader(x, y, batch_size=4, seed=0)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(loader) == 3
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in batches)


def test_loader_order_is_seeded_reshuffled_and_restorable():
    x, y = torch.zeros(100, 1), torch.arange(100)
    a = DeviceLoader(x, y, batch_size=100, seed=7)
    b = DeviceLoader(x, y, batch_size=100, seed=7)
    first_a, first_b = next(iter(a))[1], next(iter(b))[1]
    assert torch.equal(first_a, first_b)
    state = a.state_dict()
    second_a = next(iter(a))[1]
    assert not torch.equal(first_a, second_a)
    c = DeviceLoader(x, y, batch_size=100, seed=999)
    c.load_state_dict(state)
    assert torch.equal(next(iter(c))[1], second_a)


# --------------------------------------------------------------------- register_dataset


def splits(n_train: int = 6, n_test: int = 4, classes: int = 3, **changes: object) -> dict:
    """What a registered dataset function may return: four tensors and num_classes."""
    out: dict = {
        "x_train": torch.arange(n_train * 2, dtype=torch.uint8).view(n_train, 1, 2),
        "y_train": torch.arange(n_train, dtype=torch.int32) % classes,
        "x_test": torch.zeros(n_test, 1, 2, dtype=torch.float64),
        "y_test": torch.arange(n_test) % classes,
        "num_classes": classes,
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def register(name: str, returned: object) -> str:
    # Test names are registered afresh (replace=True) so a rerun in one process works.
    register_dataset(name, replace=True)(lambda **kwargs: returned)
    return name


def test_a_registered_mapping_becomes_tensor_data_named_after_the_dataset():
    @register_dataset("test-mapping", replace=True)
    def make(*, n_train: int = 6) -> dict:
        return splits(n_train=n_train, num_classes=np.int64(3))

    assert DATASETS.get("test-mapping") is make and "test-mapping" in DATASETS
    data = load_dataset("test-mapping", n_train=9)
    assert isinstance(data, TensorData) and data.name == "test-mapping"
    assert data.num_classes == 3 and type(data.num_classes) is int and data.train_size == 9
    assert data.x_train.dtype == torch.float32  # uint8 inputs become float32
    assert data.x_test.dtype == torch.float64  # floating inputs stay as given
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.y_train.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]


def test_registered_tensor_data_is_returned_as_is():
    data = TensorData(name="anything", num_classes=3, **{
        k: splits()[k] for k in ("x_train", "y_train", "x_test", "y_test")})
    assert load_dataset(register("test-tensordata", data)) is data


def test_whole_float_labels_are_accepted():
    name = register("test-float-labels", splits(y_test=torch.tensor([0.0, 2.0, 1.0, 1.0])))
    assert load_dataset(name).y_test.tolist() == [0, 2, 1, 1]


def test_registering_a_name_twice_needs_replace():
    register_dataset("test-twice", replace=True)(lambda: splits())
    with pytest.raises(ValueError, match=r"dataset 'test-twice' is registered twice"):
        register_dataset("test-twice")(lambda: splits())


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (splits(y_test=None), r"returned a mapping without y_test"),
        (splits(x_train=None, num_classes=None), r"without x_train, num_classes"),
        (splits(x_test=np.zeros((4, 1, 2))), r"x_test is a ndarray, not a torch.Tensor"),
        (
            splits(y_train=torch.zeros(5, dtype=torch.long)),
            r"x_train has 6 samples but y_train has 5",
        ),
        (splits(y_test=torch.tensor([0, 1, 3, 0])), r"y_test has labels outside \[0, 3\)"),
        (splits(y_train=-torch.ones(6, dtype=torch.long)), r"y_train has labels outside \[0, 3\)"),
        (splits(y_test=torch.tensor([0.0, 0.5, 1.0, 1.0])), r"y_test holds non-integer labels"),
        (splits(y_train=torch.zeros(6, 1, dtype=torch.long)), r"y must be 1-D"),
        (splits(num_classes=3.0), r"num_classes is a float, not an int"),
        (splits(num_classes=True), r"num_classes is a bool, not an int"),
        (splits(num_classes=0), r"num_classes is 0, not >= 1"),
        ([1, 2, 3], r"returned a list: return a TensorData or a mapping with x_train"),
    ],
)
def test_bad_returns_are_one_line_naming_the_dataset(returned, problem):
    name = register("test-bad", returned)
    with pytest.raises(ValueError, match=problem) as err:
        load_dataset(name)
    assert str(err.value).startswith("dataset 'test-bad'") and "\n" not in str(err.value)


def test_unknown_dataset_is_one_line_listing_the_known():
    with pytest.raises(ValueError, match=r"^unknown dataset 'nope': use one of .*cifar10.*mnist1d"):
        load_dataset("nope")
