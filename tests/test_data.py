import torch

from tunegap.data import DeviceLoader, load_mnist1d


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
