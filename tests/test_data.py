"""Tests of data/: the loaders' sampling guarantees, restorable shuffling, Fashion-MNIST loading and caching."""

import gzip
import importlib
import io
import os
import re
import shutil
import socket
import struct
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from cyclr import (
    DataLoaders,
    InMemoryLoader,
    TorchLoader,
    fashion_mnist,
    load_fashion_mnist,
    synthetic_classification,
    synthetic_regression,
    tiny_images,
)

# The module, not the function `data.fashion_mnist` that the package re-exports under the same name.
fm = importlib.import_module("cyclr.data.fashion_mnist")
sources = importlib.import_module("cyclr.data.sources")


def numbered(n, features=3):
    """x row i is filled with i and y[i] = i, so a batch tells which samples it holds and that x and y match."""
    y = torch.arange(n)
    x = y.float().unsqueeze(1).repeat(1, features)
    return x, y


def epoch_labels(loader):
    batches = list(loader)
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb), "x and y rows got separated"
    return [yb for _, yb in batches]


# ---------------------------------------------------------------- InMemoryLoader: sampling


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n,bs", [(100, 10), (103, 10), (7, 64), (1, 1)])
def test_every_sample_once_per_epoch(shuffle, n, bs):
    loader = InMemoryLoader(*numbered(n), bs, shuffle=shuffle)
    for _ in range(3):
        batches = epoch_labels(loader)
        assert len(batches) == len(loader) == -(-n // bs)
        assert [len(b) for b in batches[:-1]] == [bs] * (len(batches) - 1)
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last_drops_exactly_the_remainder(shuffle):
    n, bs = 103, 10
    loader = InMemoryLoader(*numbered(n), bs, shuffle=shuffle, drop_last=True)
    assert len(loader) == 10
    dropped_sets = []
    for _ in range(4):
        batches = epoch_labels(loader)
        assert len(batches) == 10 and all(len(b) == bs for b in batches)
        seen = torch.cat(batches)
        assert len(seen.unique()) == 100
        dropped_sets.append(frozenset(set(range(n)) - set(seen.tolist())))
    assert all(len(d) == 3 for d in dropped_sets)
    if shuffle:  # a different remainder each epoch, so no sample is never trained on
        assert len(set(dropped_sets)) > 1
    else:
        assert dropped_sets[0] == {100, 101, 102}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numpy_and_torch_gathers_give_the_same_batches(dtype):
    # float32 goes through NumPy's serial gather on the CPU; bfloat16, which NumPy cannot view, through index_select.
    x, y = numbered(37, features=5)
    loader = InMemoryLoader(x.to(dtype), y, 8, shuffle=True, seed=11)
    reference = torch.randperm(37, generator=torch.Generator().manual_seed(11))
    batches = list(loader)
    assert torch.equal(torch.cat([yb for _, yb in batches]), reference)
    assert torch.equal(torch.cat([xb for xb, _ in batches]), x.to(dtype)[reference])
    assert all(xb.dtype == dtype for xb, _ in batches)


def test_unshuffled_batches_are_in_order():
    x, y = numbered(25)
    batches = list(InMemoryLoader(x, y, 10))
    assert [b[1].tolist() for b in batches] == [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]


def test_reshuffled_each_epoch_and_same_across_loaders_with_same_seed():
    x, y = numbered(50)
    a, b = InMemoryLoader(x, y, 8, shuffle=True, seed=3), InMemoryLoader(x, y, 8, shuffle=True, seed=3)
    other_seed = InMemoryLoader(x, y, 8, shuffle=True, seed=4)
    orders_a = [torch.cat(epoch_labels(a)) for _ in range(3)]
    orders_b = [torch.cat(epoch_labels(b)) for _ in range(3)]
    for order_a, order_b in zip(orders_a, orders_b, strict=True):
        assert torch.equal(order_a, order_b)
    assert not torch.equal(orders_a[0], orders_a[1]) and not torch.equal(orders_a[1], orders_a[2])
    assert not torch.equal(orders_a[0], torch.arange(50))
    assert not torch.equal(torch.cat(epoch_labels(other_seed)), orders_a[0])


def test_state_dict_restores_the_next_epoch_order_exactly():
    x, y = numbered(40)
    loader = InMemoryLoader(x, y, 6, shuffle=True, seed=1)
    list(loader)
    state = loader.state_dict()
    assert state["generator"].dtype == torch.uint8 and state["epoch"] == 1
    buffer = io.BytesIO()  # a checkpoint must survive torch.save / torch.load(weights_only=True)
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    expected = [torch.cat(epoch_labels(loader)) for _ in range(2)]
    # A partial epoch (what an LR finder runs) moves the state on; restoring it rewinds.
    next(iter(loader))
    loader.load_state_dict(state)
    assert loader.epoch == 1
    replay = [torch.cat(epoch_labels(loader)) for _ in range(2)]
    assert all(torch.equal(e, r) for e, r in zip(expected, replay, strict=True))

    fresh = InMemoryLoader(x, y, 6, shuffle=True, seed=99)  # the seed is overridden by the saved state
    fresh.load_state_dict(state)
    assert torch.equal(torch.cat(epoch_labels(fresh)), expected[0])


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    loader = InMemoryLoader(*numbered(30), 4, shuffle=True)
    for _ in range(2):
        list(loader)
    loader.state_dict()
    synthetic_classification()
    synthetic_regression()
    tiny_images(n_train=20, n_valid=10)
    dls = DataLoaders.from_datasets(TensorDataset(*numbered(30)), bs=4, shuffle=True)
    list(dls.train)
    dls.train.one_batch()
    assert torch.equal(torch.rand(5), expected)


def test_one_batch_does_not_move_the_shuffling_state():
    x, y = numbered(30)
    loader, twin = InMemoryLoader(x, y, 4, shuffle=True), InMemoryLoader(x, y, 4, shuffle=True)
    xb, yb = loader.one_batch()
    assert torch.equal(yb, torch.arange(4)) and xb.shape == (4, 3)
    assert torch.equal(torch.cat(epoch_labels(loader)), torch.cat(epoch_labels(twin)))


def test_device_argument_and_to():
    x, y = numbered(10)
    loader = InMemoryLoader(x, y, 4, device="cpu")
    assert loader.device == torch.device("cpu") and loader.x.device.type == "cpu"
    assert loader.to("cpu") is loader
    if torch.cuda.is_available():
        loader.to("cuda")
        assert loader.x.is_cuda and loader.y.is_cuda
        loader.shuffle = True
        assert torch.equal(torch.cat(epoch_labels(loader)).sort().values.cpu(), torch.arange(10))


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        (([1, 2], torch.zeros(2), 1), {}, TypeError, "torch.Tensors"),
        ((torch.zeros(3, 2), torch.zeros(4), 2), {}, ValueError, "same number of samples"),
        ((torch.zeros(0, 2), torch.zeros(0), 2), {}, ValueError, "empty"),
        ((torch.zeros(3), torch.tensor(1.0), 2), {}, ValueError, "first .sample. dimension"),
        ((torch.zeros(3), torch.zeros(3), 0), {}, ValueError, "bs must be an int >= 1"),
        ((torch.zeros(3), torch.zeros(3), 2.5), {}, TypeError, "bs must be an int >= 1"),
        ((torch.zeros(3), torch.zeros(3), True), {}, TypeError, "bs must be an int"),
        ((torch.zeros(3), torch.zeros(3), 4), {"drop_last": True}, ValueError, "lower bs or set drop_last=False"),
        ((torch.zeros(3), torch.zeros(3), 1), {"seed": -1}, ValueError, "seed"),
        ((torch.zeros(3), torch.zeros(3), 1), {"rank": 2, "world_size": 2}, ValueError, "rank must be in"),
        ((torch.zeros(3), torch.zeros(3), 1), {"world_size": 4}, ValueError, "larger than the number of samples"),
    ],
)
def test_bad_input_is_refused(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        InMemoryLoader(*args, **kwargs)


def test_bad_state_dict_is_refused():
    loader = InMemoryLoader(*numbered(5), 2)
    with pytest.raises(ValueError, match="keys 'generator' and 'epoch'"):
        loader.load_state_dict({"epoch": 1})
    with pytest.raises(TypeError, match="uint8"):
        loader.load_state_dict({"generator": torch.zeros(3), "epoch": 1})


# ---------------------------------------------------------------- InMemoryLoader: sharding for data parallelism


@pytest.mark.parametrize("shuffle", [False, True])
def test_even_shards_split_one_global_permutation(shuffle):
    n, world_size, bs = 10, 3, 2
    x, y = numbered(n)
    whole = InMemoryLoader(x, y, bs, shuffle=shuffle, seed=5)
    ranks = [whole.shard(rank, world_size) for rank in range(world_size)]
    for _ in range(2):
        global_order = torch.cat(epoch_labels(whole))  # the unsharded loader, kept in step with the ranks
        per_rank = [torch.cat(epoch_labels(r)) for r in ranks]
        assert [len(r) for r in ranks] == [2, 2, 2] and all(len(p) == 4 for p in per_rank)  # ceil(10/3) = 4
        # Rank r holds positions r, r+3, ... of the global permutation, wrapped around to 12 positions.
        padded = torch.cat([global_order, global_order[:2]])
        for rank, labels in enumerate(per_rank):
            assert torch.equal(labels, padded[rank::world_size])
        assert set(torch.cat(per_rank).tolist()) == set(range(n))
    # The shards all advanced their own generators in step with the unsharded loader's.
    assert all(torch.equal(r.state_dict()["generator"], whole.state_dict()["generator"]) for r in ranks)


def test_shards_with_drop_last_are_disjoint_and_equal():
    x, y = numbered(11)
    ranks = [InMemoryLoader(x, y, 2, shuffle=True, drop_last=True, rank=r, world_size=3) for r in range(3)]
    per_rank = [torch.cat(epoch_labels(r)) for r in ranks]
    assert [len(p) for p in per_rank] == [2, 2, 2]  # 11 // 3 = 3 per rank, then one full batch of 2
    assert len(torch.cat(per_rank).unique()) == 6


def test_uneven_shards_see_every_sample_exactly_once():
    x, y = numbered(10)
    ranks = [InMemoryLoader(x, y, 3, world_size=3, rank=r, even_shards=False) for r in range(3)]
    per_rank = [torch.cat(epoch_labels(r)) for r in ranks]
    assert [len(p) for p in per_rank] == [4, 3, 3]
    assert torch.equal(torch.cat(per_rank).sort().values, torch.arange(10))


# ---------------------------------------------------------------- DataLoaders and TorchLoader


def test_from_tensors_valid_loader_is_unshuffled_with_double_batch_size():
    x, y = numbered(40)
    dls = DataLoaders.from_tensors(x, y, x[:25], y[:25], bs=8, seed=2)
    assert dls.train.shuffle and not dls.valid.shuffle
    assert dls.train.bs == 8 and dls.valid.bs == 16 and len(dls.valid) == 2
    assert torch.equal(torch.cat(epoch_labels(dls.valid)), torch.arange(25))
    assert dls.device == torch.device("cpu")
    assert DataLoaders.from_tensors(x, y, x, y, bs=8, valid_bs=5).valid.bs == 5
    assert DataLoaders.from_tensors(x, y, bs=8).valid is None
    with pytest.raises(ValueError, match="both x_valid and y_valid"):
        DataLoaders.from_tensors(x, y, x_valid=x, bs=8)


def test_dataloaders_state_dict_delegates_to_both_loaders():
    x, y = numbered(40)
    dls = DataLoaders.from_tensors(x, y, x, y, bs=8, seed=2)
    list(dls.train)
    list(dls.valid)
    state = dls.state_dict()
    assert set(state) == {"train", "valid"} and state["train"]["epoch"] == 1 and state["valid"]["epoch"] == 1
    expected = torch.cat(epoch_labels(dls.train))
    dls.load_state_dict(state)
    assert dls.train.epoch == 1
    assert torch.equal(torch.cat(epoch_labels(dls.train)), expected)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_torch_loader_sees_every_sample_and_restores_its_order(num_workers):
    x, y = numbered(30)
    dls = DataLoaders.from_datasets(TensorDataset(x, y), TensorDataset(x, y), bs=4, num_workers=num_workers, seed=7)
    assert isinstance(dls.train, TorchLoader) and dls.valid.bs == 8 and len(dls.train) == 8
    first = torch.cat(epoch_labels(dls.train))
    assert torch.equal(first.sort().values, torch.arange(30)) and not torch.equal(first, torch.arange(30))
    state = dls.state_dict()
    second = torch.cat(epoch_labels(dls.train))
    assert not torch.equal(first, second)
    dls.load_state_dict(state)
    assert torch.equal(torch.cat(epoch_labels(dls.train)), second)
    twin = DataLoaders.from_datasets(TensorDataset(x, y), bs=4, seed=7)
    assert torch.equal(torch.cat(epoch_labels(twin.train)), first)
    assert torch.equal(torch.cat(epoch_labels(dls.valid)), torch.arange(30))


def test_torch_loader_shards_partition_each_epoch():
    x, y = numbered(12)
    loader = TorchLoader(TensorDataset(x, y), 2, shuffle=True, seed=1)
    ranks = [loader.shard(r, 3) for r in range(3)]
    epochs = []
    for _ in range(2):
        per_rank = [torch.cat(epoch_labels(r)) for r in ranks]
        assert torch.equal(torch.cat(per_rank).sort().values, torch.arange(12))
        epochs.append(torch.stack(per_rank))
    assert not torch.equal(epochs[0], epochs[1])  # DistributedSampler reshuffles with the epoch


def test_torch_loader_refuses_arguments_it_owns():
    with pytest.raises(TypeError, match="sets 'generator' itself"):
        TorchLoader(TensorDataset(*numbered(4)), 2, generator=torch.Generator())


# ---------------------------------------------------------------- synthetic data


def test_synthetic_sets_are_deterministic_and_shaped():
    a, b = synthetic_classification(seed=1), synthetic_classification(seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.valid.y, b.valid.y)
    assert not torch.equal(a.train.x, synthetic_classification(seed=2).train.x)
    assert a.train.x.shape == (256, 8) and a.train.x.dtype == torch.float32 and a.train.y.dtype == torch.int64
    assert torch.equal(torch.bincount(a.train.y), torch.tensor([86, 85, 85]))

    images = tiny_images(n_train=40, n_valid=20)
    assert images.train.x.shape == (40, 1, 28, 28) and images.valid.x.shape == (20, 1, 28, 28)
    assert 0 <= images.train.x.min() and images.train.x.max() <= 1
    assert images.train.y.unique().tolist() == list(range(10))
    assert torch.equal(images.train.x, tiny_images(n_train=40, n_valid=20).train.x)


def test_synthetic_classification_is_nearly_linearly_separable():
    dls = synthetic_classification(seed=0)
    centroids = torch.stack([dls.train.x[dls.train.y == c].mean(0) for c in range(3)])
    nearest = torch.cdist(dls.valid.x, centroids).argmin(1)  # a linear classifier
    assert (nearest == dls.valid.y).float().mean() >= 0.95


def test_synthetic_regression_coefficients_are_recoverable():
    dls = synthetic_regression(n_train=512, noise=0.1, seed=3)
    weight, bias = dls.coefs
    design = torch.cat([dls.train.x, torch.ones(512, 1)], dim=1)
    solution = torch.linalg.lstsq(design, dls.train.y).solution
    assert torch.allclose(solution[:-1], weight, atol=0.03) and torch.allclose(solution[-1], bias, atol=0.03)
    residual = dls.valid.y - (dls.valid.x @ weight + bias)
    assert 0.05 < residual.std() < 0.15
    assert dls.train.y.shape == (512, 1)


# ---------------------------------------------------------------- Fashion-MNIST


def require_fashion_mnist():
    """Skip without the Debian package on a developer machine; fail on CI, where it must be installed."""
    if fm._find_files(fm.DEBIAN_DIR) is None:
        message = f"Fashion-MNIST missing from {fm.DEBIAN_DIR}: apt-get install dataset-fashion-mnist"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private disk cache and an empty in-process cache, restored afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CYCLR_DATA", raising=False)
    saved = dict(fm._memory_cache)
    fm.clear_memory_cache()
    yield tmp_path
    fm._memory_cache.clear()
    fm._memory_cache.update(saved)


def test_fashion_mnist_real_data():
    require_fashion_mnist()
    dls = fashion_mnist(bs=128)
    assert dls.train.x.shape == (60000, 1, 28, 28) and dls.valid.x.shape == (10000, 1, 28, 28)
    assert dls.train.x.dtype == torch.float32 and dls.train.y.dtype == torch.int64
    assert dls.train.x.min() == 0 and dls.train.x.max() == 1
    assert torch.equal(torch.bincount(dls.train.y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(dls.valid.y), torch.full((10,), 1000))
    assert dls.train.shuffle and dls.train.bs == 128 and dls.valid.bs == 256 and len(dls.train) == 469
    assert dls.classes[0] == "T-shirt/top" and len(dls.classes) == 10

    x_train, y_train, x_test, y_test = load_fashion_mnist()
    assert x_train.dtype == torch.uint8 and x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert torch.equal(dls.train.x[:, 0], x_train.float() / 255) and torch.equal(dls.valid.y, y_test)


def test_fashion_mnist_subset_and_normalize():
    require_fashion_mnist()
    full = fashion_mnist()
    small = fashion_mnist(bs=32, n_train=1000, n_valid=500, normalize=True, valid_bs=100)
    assert small.train.n == 1000 and small.valid.n == 500 and small.valid.bs == 100
    assert torch.equal(small.train.y, full.train.y[:1000])
    raw = full.train.x[:1000]
    assert torch.allclose(small.train.x, (raw - raw.mean()) / raw.std(), atol=1e-5)
    assert abs(small.train.x.mean()) < 1e-5 and abs(small.train.x.std() - 1) < 1e-5
    with pytest.raises(ValueError, match=r"n_train must be None or an int in \[1, 60000\]"):
        fashion_mnist(n_train=0)


def test_fashion_mnist_second_load_comes_from_the_caches(isolated_cache, monkeypatch):
    require_fashion_mnist()
    first = load_fashion_mnist()
    assert (isolated_cache / "cache" / "cyclr" / "fashion_mnist.pt").is_file()

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again instead of using the cache")

    monkeypatch.setattr(fm, "_read_idx", no_decoding)
    from_memory = load_fashion_mnist()
    fm.clear_memory_cache()
    from_disk = load_fashion_mnist()
    for a, b, c in zip(first, from_memory, from_disk, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    from_memory[0][0, 0, 0] = 7  # callers get copies: the cache stays intact
    assert torch.equal(load_fashion_mnist()[0], first[0])


def test_fashion_mnist_torchvision_layout_and_stale_cache(isolated_cache):
    require_fashion_mnist()
    raw = isolated_cache / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in fm._FILES.values():
        shutil.copy(fm.DEBIAN_DIR / f"{stem}.gz", raw)
    labels = raw / "t10k-labels-idx1-ubyte.gz"  # one file uncompressed, as torchvision leaves it
    (raw / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(labels.read_bytes()))
    labels.unlink()
    x_train, y_train, x_test, y_test = load_fashion_mnist(root=isolated_cache / "data")
    assert x_train.shape == (60000, 28, 28) and torch.equal(torch.bincount(y_test), torch.full((10,), 1000))

    # Changing a source file changes the cache key, so the stale cache is not used; and the changed file no longer
    # has Fashion-MNIST's published MD5: refused, naming the file.
    uncompressed = raw / "t10k-labels-idx1-ubyte"
    content = bytearray(uncompressed.read_bytes())
    content[8] = (content[8] + 1) % 10  # relabel the first test image
    uncompressed.write_bytes(bytes(content))
    os.utime(uncompressed, ns=(time.time_ns(), time.time_ns() + 10**9))
    fm.clear_memory_cache()
    expected = r"t10k-labels-idx1-ubyte: its content's MD5 is [0-9a-f]{32}, but Fashion-MNIST's t10k-labels-idx1-ubyte "
    with pytest.raises(ValueError, match=expected + "has 15d484375f8d13e6eb1aabb0c3f46965"):
        load_fashion_mnist(root=isolated_cache / "data")


def test_a_damaged_disk_cache_is_detected_and_decoded_again(isolated_cache):
    require_fashion_mnist()
    fm.clear_memory_cache()
    reference = load_fashion_mnist()  # decodes and writes the (isolated) disk cache
    cache = isolated_cache / "cache" / "cyclr" / "fashion_mnist.pt"
    saved = torch.load(cache, weights_only=True)
    for damage in ("flip a label", "drop training images"):
        bad = dict(saved)
        if damage == "flip a label":
            bad["y_test"] = saved["y_test"].clone()
            bad["y_test"][0] = (bad["y_test"][0] + 1) % 10
        else:
            bad["x_train"], bad["y_train"] = saved["x_train"][:100].clone(), saved["y_train"][:100].clone()
            bad["sha256"] = sources.tensors_digest({k: v for k, v in bad.items() if k not in ("key", "sha256")})
        torch.save(bad, cache)
        fm.clear_memory_cache()
        with pytest.warns(UserWarning, match="damaged|expected shape"):
            again = load_fashion_mnist()
        assert all(torch.equal(a, b) for a, b in zip(again, reference, strict=True)), damage


def test_a_corrupt_gzip_source_is_reported_with_its_path(tmp_path):
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + bytes(100))[:-12])  # truncated archive
    with pytest.raises(ValueError, match=f"{broken} cannot be read .*damaged"):
        fm._read_idx(broken)


def write_idx(path, magic_type, dims, payload):
    path.write_bytes(bytes([0, 0, magic_type, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload)


def test_idx_parser_checks_magic_and_size(tmp_path):
    good = tmp_path / "good"
    write_idx(good, 0x08, (2, 3), bytes(range(6)))
    assert torch.equal(fm._read_idx(good), torch.arange(6, dtype=torch.uint8).reshape(2, 3))
    bad_type = tmp_path / "bad_type"
    write_idx(bad_type, 0x0D, (2,), bytes(8))
    with pytest.raises(ValueError, match="bad magic number"):
        fm._read_idx(bad_type)
    short = tmp_path / "short"
    write_idx(short, 0x08, (4, 4), bytes(15))
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        fm._read_idx(short)


def test_missing_fashion_mnist_names_the_options(isolated_cache, monkeypatch):
    empty = isolated_cache / "empty"
    empty.mkdir()
    monkeypatch.setenv("CYCLR_DATA", str(empty))
    monkeypatch.setattr(fm, "DEBIAN_DIR", isolated_cache / "no-such-dir")
    attempts = []

    def offline_download(download_root):
        attempts.append(download_root)
        raise OSError("network is unreachable")

    monkeypatch.setattr(fm, "_download_with_torchvision", offline_download)
    with pytest.raises(FileNotFoundError) as raised:
        fashion_mnist(root=empty)
    message = str(raised.value)
    options = ("apt-get install dataset-fashion-mnist", "root=", "CYCLR_DATA", "internet", "network is unreachable")
    for option in options:
        assert option in message
    assert attempts == [empty]

    with pytest.raises(FileNotFoundError, match="download=False"):
        load_fashion_mnist(root=empty, download=False)
    assert len(attempts) == 1


def test_download_probe_gives_up_quickly_instead_of_hanging(monkeypatch):
    def hanging_connect(*args, **kwargs):
        time.sleep(3)

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="no answer"):
        sources.check_reachable("http://example.invalid/", timeout=0.2)
    assert time.perf_counter() - start < 2


# ---------------------------------------------------------------- CIFAR-10

cifar = importlib.import_module("cyclr.data.cifar10")
images = importlib.import_module("cyclr.data.images")


def make_image_folder(root, n_train=2, n_test=1, seed=0):
    """A CIFAR-10-shaped image folder of random PNGs (lossless, so decoded pixels can be compared exactly)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    originals = {"train": [], "test": []}
    for split, per_class in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(cifar.CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / name / f"{i:04d}.png")
                originals[split].append((image, label))
    return originals


@pytest.fixture
def isolated_cifar_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CYCLR_DATA", raising=False)
    saved = dict(cifar._memory_cache)
    cifar._memory_cache.clear()
    yield tmp_path
    cifar._memory_cache.clear()
    cifar._memory_cache.update(saved)


def test_cifar_image_folder_and_its_tarball_decode_exactly(isolated_cifar_cache):
    import tarfile

    folder = isolated_cifar_cache / "cifar"
    originals = make_image_folder(folder)
    x_train, y_train, x_test, y_test = cifar.load_cifar10(root=folder, download=False)
    assert x_train.shape == (20, 3, 32, 32) and x_train.dtype == torch.uint8 and x_test.shape == (10, 3, 32, 32)
    assert torch.equal(x_train, torch.stack([image for image, _ in originals["train"]]))
    assert torch.equal(y_train, torch.tensor([label for _, label in originals["train"]]))
    assert torch.equal(y_test, torch.arange(10))

    tarball = isolated_cifar_cache / "mini-cifar.tar.gz"  # an archive of one's own: no known checksum
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder / "train", arcname="train")
        archive.add(folder / "test", arcname="test")
    from_tar = cifar.load_cifar10(root=tarball, download=False)
    assert all(torch.equal(a, b) for a, b in zip(from_tar, (x_train, y_train, x_test, y_test), strict=True))


def test_a_damaged_copy_of_the_cifar_jpeg_edition_is_refused(isolated_cifar_cache):
    if not cifar.SHARED_TARBALL.is_file():
        pytest.fail(f"the CIFAR-10 JPEG edition is missing at {cifar.SHARED_TARBALL} (../shared/data)")
    copy = isolated_cifar_cache / cifar.TARBALL_NAME
    content = bytearray(cifar.SHARED_TARBALL.read_bytes())
    content[len(content) // 2] ^= 0x01  # one flipped bit
    copy.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=f"{copy}: its SHA-256 is [0-9a-f]{{64}}, but the CIFAR-10 JPEG edition has "
                                         f"{cifar.TARBALL_SHA256}: the file is damaged"):
        cifar.load_cifar10(root=copy, download=False)


def test_jpeg_batch_decoder_matches_pil():
    from PIL import Image

    generator = torch.Generator().manual_seed(4)
    payloads = []
    for _ in range(5):
        buffer = io.BytesIO()
        image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(image.numpy()).save(buffer, format="JPEG", quality=90)
        payloads.append(buffer.getvalue())
    pil = torch.stack([images.decode_with_pil(payload) for payload in payloads])
    assert pil.shape == (5, 3, 32, 32)
    assert torch.equal(images.decode_images(payloads, [f"{i}.jpg" for i in range(5)]), pil)


def jpeg_bytes(seed: int, size=(32, 32)) -> bytes:
    from PIL import Image

    pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def jpeg_folder(root) -> Path:
    """A CIFAR-10-shaped folder of JPEGs, one per class and split."""
    for split in ("train", "test"):
        for label, name in enumerate(cifar.CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            (root / split / name / "0000.jpg").write_bytes(jpeg_bytes(label + (100 if split == "test" else 0)))
    return root


def ten_bytes_corrupted_near_the_end(payload: bytes) -> bytes:
    damaged = bytearray(payload)
    for i in range(len(damaged) - 30, len(damaged) - 20):
        damaged[i] ^= 0x5A
    return bytes(damaged)


@pytest.mark.parametrize(("damage", "match"), [
    (lambda good: good[: len(good) // 2], "cannot be decoded as an image .*truncated"),
    (lambda good: b"<html>not found</html>", "cannot be decoded as an image"),
    (lambda good: b"", r"is empty \(0 bytes\)"),
    (lambda good: jpeg_bytes(0, size=(28, 32)), r"(?s)are not 32x32 pixels \(height x width\).*: \(28, 32\)"),
    (ten_bytes_corrupted_near_the_end, r"(?s)damaged \(the decoder reported corrupt data.*Corrupt JPEG data"),
])
def test_a_bad_image_file_is_refused_naming_it(isolated_cifar_cache, damage, match):
    folder = jpeg_folder(isolated_cifar_cache / "cifar")
    bad = folder / "train" / "cat" / "0000.jpg"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(images.ImageDecodeError, match=match) as caught:
        cifar.load_cifar10(root=folder, download=False)
    assert str(bad) in str(caught.value)
    tarball = isolated_cifar_cache / "mine.tar"  # from an archive: named by archive and member
    with tarfile.open(tarball, "w") as archive:
        archive.add(folder / "train", arcname="train")
        archive.add(folder / "test", arcname="test")
    with pytest.raises(images.ImageDecodeError, match=re.escape(f"{tarball}:train/cat/0000.jpg")):
        cifar.load_cifar10(root=tarball, download=False)


def test_an_image_rewritten_in_place_is_decoded_again(isolated_cifar_cache):
    folder = jpeg_folder(isolated_cifar_cache / "cifar")
    before = cifar.load_cifar10(root=folder, download=False)[0]
    image, class_folder = folder / "train" / "cat" / "0000.jpg", folder / "train" / "cat"
    folder_times = class_folder.stat()
    image.write_bytes(jpeg_bytes(1234))  # same name, same folder: the folder's mtime does not change
    os.utime(class_folder, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    after = cifar.load_cifar10(root=folder, download=False)[0]
    cat = cifar.CIFAR10_CLASSES.index("cat")
    assert torch.equal(after[cat], images.decode_with_pil(jpeg_bytes(1234)))
    assert not torch.equal(after[cat], before[cat]) and torch.equal(after[:cat], before[:cat])
    cifar._memory_cache.clear()  # the disk cache too is keyed on the file
    assert torch.equal(cifar.load_cifar10(root=folder, download=False)[0], after)


def test_cifar_folder_with_unknown_class_is_refused(isolated_cifar_cache):
    folder = isolated_cifar_cache / "cifar"
    make_image_folder(folder, n_train=1)
    (folder / "train" / "spaceship").mkdir()
    shutil.copy(folder / "train" / "cat" / "0000.png", folder / "train" / "spaceship" / "0000.png")
    with pytest.raises(ValueError, match="spaceship"):
        cifar.load_cifar10(root=folder, download=False)


def test_random_crop_and_flip_match_a_per_image_oracle():
    xb = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cropped = cifar.random_crop(xb, 4, torch.Generator().manual_seed(2))
    offsets = torch.randint(0, 9, (2, 16), generator=torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(xb, (4, 4, 4, 4))
    for i in range(16):
        dy, dx = offsets[:, i].tolist()
        assert torch.equal(cropped[i], padded[i, :, dy : dy + 32, dx : dx + 32])
    assert len({tuple(o) for o in offsets.T.tolist()}) > 1  # the oracle really covers different windows

    flipped = cifar.random_flip(xb, torch.Generator().manual_seed(3))
    coins = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < coins.sum() < 16
    for i in range(16):
        assert torch.equal(flipped[i], xb[i].flip(2) if coins[i] else xb[i])


def test_cifar10_loaders_normalise_augment_and_replay(isolated_cifar_cache):
    folder = isolated_cifar_cache / "cifar"
    make_image_folder(folder, n_train=4)
    dls = cifar.cifar10(bs=8, root=folder, download=False)
    raw = dls.train.x.double() / 255
    mean, std = raw.mean((0, 2, 3)), raw.std((0, 2, 3), correction=0)
    assert torch.allclose(dls.train.batch_tfm.mean.flatten().double(), mean, atol=1e-6)
    assert torch.allclose(dls.train.batch_tfm.std.flatten().double(), std, atol=1e-6)
    assert dls.train.x.dtype == torch.uint8 and len(dls.train) == 5 and dls.valid.bs == 16
    assert dls.classes == list(cifar.CIFAR10_CLASSES)

    xb, yb = next(iter(dls.valid))  # validation: normalised, not augmented
    expected = (dls.valid.x[:10].float() / 255 - mean.float().view(1, 3, 1, 1)) / std.float().view(1, 3, 1, 1)
    assert xb.dtype == torch.float32 and torch.allclose(xb, expected, atol=1e-5)

    state = dls.train.state_dict()
    first = [xb for xb, _ in dls.train]
    dls.train.load_state_dict(state)
    replay = [xb for xb, _ in dls.train]
    assert all(torch.equal(a, b) for a, b in zip(first, replay, strict=True))  # crops and flips included
    plain = cifar.cifar10(bs=8, root=folder, download=False, augment=False, shuffle=False)
    assert not torch.equal(torch.cat(first).sort(0).values, torch.cat([xb for xb, _ in plain.train]).sort(0).values)

    subset = cifar.cifar10(bs=8, root=folder, download=False, n_train=12, n_valid=5)
    assert subset.train.n == 12 and subset.valid.n == 5 and len(subset.train.y.unique()) > 1


def test_missing_cifar10_names_the_options(isolated_cifar_cache, monkeypatch):
    empty = isolated_cifar_cache / "empty"
    empty.mkdir()
    monkeypatch.setattr(cifar, "SHARED_TARBALL", isolated_cifar_cache / "none.tar.gz")

    def offline_download(download_root):
        raise OSError("offline")

    monkeypatch.setattr(cifar, "_download_with_torchvision", offline_download)
    with pytest.raises(FileNotFoundError) as raised:
        cifar.load_cifar10(root=empty)
    for option in ("root=", "CYCLR_DATA", "cifar10-jpg.tar.gz", "internet", "offline"):
        assert option in str(raised.value)


def test_cifar10_shared_tarball():
    """The project's JPEG copy of CIFAR-10 (decoded once, about 10 s on 2 cores, then read from the disk cache)."""
    if not cifar.SHARED_TARBALL.is_file():
        message = f"CIFAR-10 missing: {cifar.SHARED_TARBALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    x_train, y_train, x_test, y_test = cifar.load_cifar10(download=False)
    assert x_train.shape == (50000, 3, 32, 32) and x_test.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(y_train), torch.full((10,), 5000))
    assert torch.equal(torch.bincount(y_test), torch.full((10,), 1000))
