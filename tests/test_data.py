"""tfnas.data: folder and tfds datasets, splits, augmentation, errors."""

import os

import numpy as np
import pytest

from tfnas import data
from tfnas.data import DatasetError


@pytest.fixture(scope="session")
def mini(cifar_mini):
    return data.open_dataset(f"folder:{cifar_mini}", validation=1000)


def _write_images(root, split, classes, shape=(32, 32, 3), per_class=3, odd=None):
    from PIL import Image
    rng = np.random.RandomState(0)
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = odd if (odd is not None and c == classes[-1] and i == per_class - 1) else shape
            arr = rng.randint(0, 256, size=s, dtype=np.uint8)
            Image.fromarray(arr.squeeze() if s[-1] == 1 else arr).save(d / f"{i:04d}.png")


def test_mini_info_and_splits(mini):
    info = mini.info
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert info.class_names[0] == "airplane" and info.class_names[9] == "truck"
    assert info.num_examples["train"] == 9000 and info.num_examples["validation"] == 1000
    assert info.num_examples["test"] == 2000
    assert info.num_examples["train_a"] + info.num_examples["train_b"] == 9000
    # statistics are those of the real CIFAR-10 images, roughly the known ones
    assert np.allclose(info.mean, data.CIFAR_STATS["cifar10"][0], atol=0.01)
    assert np.allclose(info.std, data.CIFAR_STATS["cifar10"][1], atol=0.01)
    # carved splits are disjoint and cover train
    tr = mini.arrays("train")[0].reshape(9000, -1)
    va = mini.arrays("validation")[0].reshape(1000, -1)
    keys = {row.tobytes() for row in tr}
    assert not any(row.tobytes() in keys for row in va[:200])
    # every class present in the validation split (it comes from a permutation)
    assert len(np.unique(mini.arrays("validation")[1])) == 10


def test_test_split_pipeline_is_normalised_and_ordered(mini):
    ds = mini.dataset("test", 500)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (2000, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    raw_x, raw_y = mini.arrays("test")
    np.testing.assert_array_equal(y, raw_y)
    expect = (raw_x / 255.0 - np.array(mini.info.mean)) / np.array(mini.info.std)
    np.testing.assert_allclose(x, expect, atol=1e-5)


def test_a_probe_sample_has_every_class_and_is_fixed_by_its_seed(mini):
    # the folder's test images are listed class by class: the first 160 are one class
    first = np.concatenate([y.numpy() for _, y in mini.dataset("test", 40, shuffle=False, epoch=0).take(4)])
    assert len(set(first.tolist())) == 1
    labels = lambda seed: np.concatenate([y.numpy() for _, y in mini.sample("test", 160, 40, seed)])
    sample = labels(0)
    assert len(sample) == 160 and len(set(sample.tolist())) == 10
    np.testing.assert_array_equal(sample, labels(0))
    assert not np.array_equal(sample, labels(1))
    x, _ = next(iter(mini.sample("test", 8, 8)))
    assert x.shape == (8, 32, 32, 3) and abs(float(x.numpy().mean())) < 1.0   # normalised, not augmented


def test_augmentation_crop_flip_cutout(mini):
    ds = mini.dataset("train", 256, augment=True, cutout=16, seed=3, epoch=0)
    x, y = next(iter(ds))
    x = x.numpy()
    mean, std = np.array(mini.info.mean), np.array(mini.info.std)
    pixels = x * std + mean                          # back to [0, 1]
    zero_pad = np.isclose(pixels, 0, atol=1e-5).all(-1)
    hole = np.isclose(x, 0, atol=1e-6).all(-1)
    assert hole.any(axis=(1, 2)).mean() > 0.9        # cutout almost always visible
    assert max(hole[i].sum() for i in range(len(hole))) <= 16 * 16
    assert zero_pad.any(axis=(1, 2)).mean() > 0.5    # padding shows after most crops


def test_crop_flip_is_a_padded_crop_of_the_same_image():
    import tensorflow as tf
    rng = np.random.RandomState(1)
    x = rng.rand(16, 32, 32, 3).astype(np.float32) + 0.5   # no zeros inside the image
    out = data._random_crop_flip(tf.constant(x), 4, tf.constant([1, 2], tf.int64),
                                 tf.constant([3, 4], tf.int64)).numpy()
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)])
    shifts, flips = set(), set()
    for i in range(16):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                       padded[i, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {i} is not a crop of its padded source"
        shifts.add(matches[0][:2])
        flips.add(matches[0][2])
    assert len(shifts) > 4 and flips == {0, 1}


def test_early_crops_are_unpadded_crops_of_the_same_image():
    import tensorflow as tf
    rng = np.random.RandomState(2)
    x = rng.rand(16, 32, 32, 3).astype(np.float32)
    out = data._random_crop_flip(tf.constant(x), 0, tf.constant([5, 6], tf.int64),
                                 tf.constant([7, 8], tf.int64), size=24).numpy()
    assert out.shape == (16, 24, 24, 3)
    shifts = set()
    for i in range(16):
        matches = [(dy, dx) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(x[i, dy:dy + 24, dx:dx + 24]))]
        assert matches, f"image {i} is not a 24-pixel crop of its source"
        shifts.add(matches[0])
    assert len(shifts) > 4


def test_crop_pipeline_and_its_errors(mini):
    a = [x.numpy() for x, _ in mini.dataset("train", 500, augment=True, seed=3, epoch=1, crop=24)]
    b = [x.numpy() for x, _ in mini.dataset("train", 500, augment=True, seed=3, epoch=1, crop=24)]
    assert a[0].shape == (500, 24, 24, 3) and len(a) == 18
    np.testing.assert_array_equal(a[0], b[0])          # seeded like every augmentation
    ds = mini.dataset("train", 64, augment=True, epochs=range(0, 2), crop=24)
    assert ds.element_spec[0].shape.as_list() == [None, 24, 24, 3]
    for bad, kw in ((40, dict(augment=True)), (0, dict(augment=True)), (24, dict(augment=False))):
        with pytest.raises(DatasetError, match="crop"):
            mini.dataset("train", 64, crop=bad, **kw)


def test_order_is_a_function_of_seed_and_epoch(mini):
    def labels(**kw):
        return np.concatenate([y.numpy() for _, y in mini.dataset("train_a", 1000, shuffle=True, **kw)])
    a, b = labels(seed=1, epoch=4), labels(seed=1, epoch=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, labels(seed=1, epoch=5))
    assert not np.array_equal(a, labels(seed=2, epoch=4))
    assert sorted(a) == sorted(mini.arrays("train_a")[1])  # a permutation of the split
    # epoch=None: a new order on every pass over the same dataset object
    ds = mini.dataset("train_a", 1000, shuffle=True, seed=1)
    first = np.concatenate([y.numpy() for _, y in ds])
    second = np.concatenate([y.numpy() for _, y in ds])
    assert not np.array_equal(first, second)


def test_a_multi_epoch_pipeline_is_its_epochs_in_a_row(mini):
    def batches(ds):
        return [(x.numpy(), y.numpy()) for x, y in ds]
    kw = dict(augment=True, cutout=8, seed=3)
    per_epoch = [batches(mini.dataset("train_a", 1000, epoch=e, **kw)) for e in (2, 3)]
    together = batches(mini.dataset("train_a", 1000, epochs=range(2, 4), **kw))
    assert len(together) == 10 == 2 * mini.batches_per_epoch("train_a", 1000)
    for (xa, ya), (xb, yb) in zip(together, per_epoch[0] + per_epoch[1]):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    # batches_per_epoch cuts every epoch, not the whole pipeline
    cut = batches(mini.dataset("train_a", 1000, epochs=range(2, 4), batches_per_epoch=2, **kw))
    assert [y.tolist() for _, y in cut] == [y.tolist() for _, y in per_epoch[0][:2] + per_epoch[1][:2]]
    with pytest.raises(ValueError, match="epoch or epochs"):
        mini.dataset("train_a", 1000, epoch=1, epochs=range(2))


def test_batch_stream_gives_fixed_passes_of_one_iterator(mini):
    assert mini.batches_per_epoch("test", 300) == 7                        # 2000 = 6*300 + 200
    assert mini.batches_per_epoch("test", 300, drop_remainder=True) == 6
    stream = data.BatchStream(mini.dataset("test", 300).repeat(), 7)
    first = [y.numpy() for _, y in stream.next_pass()]
    second = [y.numpy() for _, y in stream.next_pass()]
    assert [len(y) for y in first] == [300] * 6 + [200]
    for a, b in zip(first, second):   # the repeat starts the next pass at the split's start
        np.testing.assert_array_equal(a, b)
    ending = data.BatchStream(mini.dataset("test", 1000), 3)
    assert len(list(ending.next_pass())) == 2 and list(ending.next_pass()) == []
    with pytest.raises(ValueError, match="at least one batch"):
        data.BatchStream(mini.dataset("test", 1000), 0)


def test_distribute_only_when_the_strategy_has_several_replicas(mini):
    import tensorflow as tf

    class TwoReplicas:   # stands in for a two-device strategy
        num_replicas_in_sync = 2

        def experimental_distribute_dataset(self, dataset):
            return ("distributed", dataset)

    ds = mini.dataset("test", 100)
    assert data.distribute(ds, tf.distribute.get_strategy()) is ds
    assert data.distribute(ds, TwoReplicas()) == ("distributed", ds)
    assert not data.is_multiworker(tf.distribute.get_strategy())


def test_darts_halves(cifar_mini):
    w, a, info = data.darts_search_splits(f"folder:{cifar_mini}", 1000)
    assert info.num_examples["train_a"] == 5000 == info.num_examples["train_b"]
    x, _ = next(iter(w))
    assert x.shape == (1000, 32, 32, 3)


def test_load_dataset_interface(cifar_mini):
    ds, info = data.load_dataset(f"folder:{cifar_mini}", "test", 64)
    assert info.num_classes == 10
    x, y = next(iter(ds))
    assert x.shape == (64, 32, 32, 3)


@pytest.mark.parametrize("spec, message", [
    ("folder:/nonexistent/tfnas-data", "does not exist"),
    ("imagenet", "unknown dataset"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        data.open_dataset(spec)


def test_empty_and_classless_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no train/"):
        data.open_dataset(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "test").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class sub-folders"):
        data.open_dataset(f"folder:{tmp_path / 'noclass'}")
    for split in ("train", "test"):
        (tmp_path / "noimg" / split / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="contains no images"):
        data.open_dataset(f"folder:{tmp_path / 'noimg'}")


def test_wrong_image_size_and_channels(tmp_path):
    classes = ["a", "b"]
    for split in ("train", "test"):
        _write_images(tmp_path / "size", split, classes, odd=(28, 28, 3) if split == "test" else None)
    with pytest.raises(DatasetError, match=r"28x28.*expected 32x32"):
        data.open_dataset(f"folder:{tmp_path / 'size'}")
    for split in ("train", "test"):
        _write_images(tmp_path / "chan", split, classes, odd=(32, 32, 1) if split == "train" else None)
    with pytest.raises(DatasetError, match=r"1 channel"):
        data.open_dataset(f"folder:{tmp_path / 'chan'}")


def test_small_folder_dataset_and_stats_cache(tmp_path):
    for split in ("train", "test"):
        _write_images(tmp_path / "ok", split, ["x", "y", "z"], shape=(8, 8, 3))
    d = data.open_dataset(f"folder:{tmp_path / 'ok'}")
    assert d.info.image_shape == (8, 8, 3) and d.info.num_classes == 3
    cached = os.listdir(os.path.join(os.environ["TFNAS_CACHE_DIR"], "datasets"))
    assert any(name.startswith("folder-") for name in cached)
    raw = d.arrays("train")[0] / 255.0
    np.testing.assert_allclose(d.info.mean, raw.reshape(-1, 3).mean(0), rtol=1e-6)
    with pytest.raises(DatasetError, match="unknown split"):
        d.dataset("validation", 4)


def test_tfds_missing_fails_at_once(tmp_path):
    import time
    t = time.time()
    with pytest.raises(DatasetError, match=r"not prepared.*folder:PATH"):
        data.open_dataset("cifar10", data_dir=str(tmp_path))
    assert time.time() - t < 2.0
