"""Image-classification data: CIFAR-10/100 (tfds) and image-folder datasets.

Public API
----------
``load_dataset(spec, split, batch_size, augment=False, cutout=0, validation=0,
data_dir=None, seed=0, shuffle=None, epoch=None, drop_remainder=False)``
    -> ``(tf.data.Dataset, DatasetInfo)``.  The dataset yields
    ``(images, labels)``: float32 NHWC images normalised per channel with the
    dataset's statistics, int32 labels.  One pass over it is one epoch.

``open_dataset(spec, data_dir=None, validation=0)`` -> :class:`ImageData`,
    the decoded arrays and their info; ``ImageData.dataset(split, ...)``
    builds pipelines without decoding again (use it when you need several
    splits, one pipeline per epoch, or -- ``epochs=range(a, b)`` -- one
    pipeline of several epochs).

``BatchStream(dataset, batches_per_pass)``: fixed-size passes (epochs) over
    one long-lived iterator; what long runs iterate (see its docstring).

``dataset_info(spec, data_dir=None)`` -> :class:`DatasetInfo` (num_classes,
    image_shape, num_examples per split, mean, std, class_names).

``DatasetError(ValueError)``: a dataset that cannot be used (missing, not
    prepared, empty, inconsistent images); the message is one line.

Dataset specs: ``cifar10``, ``cifar100`` (a *prepared* tfds directory, given
by ``data_dir`` or ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``; nothing
is ever downloaded here) and ``folder:PATH`` (``PATH/train/<class>/*.png``
and ``PATH/test/<class>/*``, class index = sorted folder name order).

Splits: ``train``, ``test``; with ``validation`` > 0 (a count, or a
fraction < 1), ``validation`` is carved out of train and ``train`` is the
rest.  ``train_a`` / ``train_b`` are the two halves of ``train`` used by
DARTS search (weights on ``train_a``, architecture on ``train_b``).  Carved
splits come from a fixed permutation (seed 0), so they do not change with
the training seed; :func:`darts_search_splits` builds both halves at once.

Randomness: shuffling and augmentation are stateless functions of
``(seed, epoch, batch index)``.  With ``epoch=<int>`` a pipeline is
identical every time it is iterated (resumable training builds the epoch it
needs); with ``epoch=None`` every iteration draws a fresh epoch key from
``seed`` (reproducible per process, a different order each pass).

Augmentation (``augment=True``), as the DARTS reference: random 32x32 crop of
the image zero-padded by 4 pixels, horizontal flip, normalise, then cutout of
a ``cutout``-pixel square (centre uniform over the image, clipped at the
border, set to 0 after normalisation).  With ``crop=S`` the crop is instead
an SxS window of the unpadded image (``train.py --early-crop``).  It runs
per batch, vectorised.

Speed: images are decoded once into memory (uint8); folder datasets are
also cached on disk (``$TFNAS_CACHE_DIR`` or ``~/.cache/tfnas``) keyed by the
folder's file list, sizes and times, together with their per-channel
statistics.  Batches are gathered from memory, augmented in parallel and
prefetched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from tfnas.files import atomic_write

__all__ = [
    "DatasetError", "DatasetInfo", "ImageData", "open_dataset", "load_dataset",
    "dataset_info", "darts_search_splits", "CIFAR_STATS", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")

# Per-channel mean/std (of [0, 1] pixels) the DARTS reference uses.
CIFAR_STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
                 (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)),
}
_TFDS_NAMES = {"cifar10": 10, "cifar100": 100}
_SPLIT_SEED = 0          # carved splits never depend on the training seed
_CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says why and what to do."""


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple            # (height, width, channels)
    num_examples: dict            # split -> count (after carving)
    mean: tuple                   # per channel, of [0, 1] pixels
    std: tuple
    class_names: list = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return int(self.image_shape[0])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d


# -- loading raw arrays -----------------------------------------------------

def _cache_dir() -> str:
    return os.environ.get("TFNAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfnas")


def _list_folder_split(root: str, split: str):
    """Sorted ``[(class_name, [file paths])]`` of ``root/split``."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DatasetError(f"folder dataset {root}: no {split}/ sub-folder "
                           f"(expected {root}/{split}/<class>/<image files>)")
    classes = []
    with os.scandir(path) as entries:
        dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not dirs:
        raise DatasetError(f"folder dataset {root}: {split}/ has no class sub-folders "
                           f"(expected {split}/<class>/<image files>)")
    for name in dirs:
        with os.scandir(os.path.join(path, name)) as entries:
            files = sorted(e.path for e in entries
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        classes.append((name, files))
    if not any(files for _, files in classes):
        raise DatasetError(f"folder dataset {root}: {split}/ contains no images "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    return classes


def _fingerprint(root: str, listing: dict) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION}:{os.path.abspath(root)}".encode())
    for split in sorted(listing):
        for cls, files in listing[split]:
            digest.update(f"{split}/{cls}:{len(files)}".encode())
            for f in files:
                st = os.stat(f)
                digest.update(f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return digest.hexdigest()[:24]


def _decode_folder(root: str, listing: dict, class_names: list):
    """Decode every image, checking size and channels against the first one."""
    from PIL import Image, UnidentifiedImageError

    reference = None   # (h, w, c, path)
    arrays = {}
    for split, classes in listing.items():
        images, labels = [], []
        for cls, files in classes:
            label = class_names.index(cls)
            for f in files:
                try:
                    with Image.open(f) as im:
                        if im.mode not in ("RGB", "L"):
                            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                        arr = np.asarray(im, dtype=np.uint8)
                except (UnidentifiedImageError, OSError, ValueError) as err:
                    raise DatasetError(f"cannot read image {f}: {err}") from None
                if arr.ndim == 2:
                    arr = arr[:, :, None]
                if reference is None:
                    reference = (*arr.shape, f)
                    if arr.shape[2] not in (1, 3):
                        raise DatasetError(
                            f"image {f} has {arr.shape[2]} channels; expected 1 (grey) or 3 (RGB)")
                if arr.shape != reference[:3]:
                    h, w, c = arr.shape
                    rh, rw, rc = reference[:3]
                    raise DatasetError(
                        f"image {f} is {h}x{w} with {c} channel(s); expected {rh}x{rw} with "
                        f"{rc} channel(s) like {reference[3]} (all images must match)")
                images.append(arr)
                labels.append(label)
        arrays[split] = (np.stack(images), np.asarray(labels, np.int32))
    return arrays


def _channel_stats(images: np.ndarray):
    """Per-channel mean and (population) std of uint8 images scaled to [0, 1]."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in x.std(0))


def _load_folder(root: str):
    root = os.path.expanduser(root)
    if not root:
        raise DatasetError("folder: needs a path, e.g. folder:data/my-images")
    if not os.path.exists(root):
        raise DatasetError(f"dataset folder {root} does not exist")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder {root} is not a directory")
    listing = {split: _list_folder_split(root, split) for split in ("train", "test")}
    class_names = [c for c, _ in listing["train"]]
    extra = [c for c, _ in listing["test"] if c not in class_names]
    if extra:
        raise DatasetError(f"folder dataset {root}: test/ has classes not in train/: "
                           f"{', '.join(extra)}")
    key = _fingerprint(root, listing)
    cache = os.path.join(_cache_dir(), "datasets", f"folder-{key}.npz")
    if os.path.isfile(cache):
        try:
            with np.load(cache) as z:
                arrays = {s: (z[f"{s}_x"], z[f"{s}_y"]) for s in ("train", "test")}
                mean, std = tuple(z["mean"].tolist()), tuple(z["std"].tolist())
            return arrays, class_names, mean, std
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    arrays = _decode_folder(root, listing, class_names)
    mean, std = _channel_stats(arrays["train"][0])
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with atomic_write(cache, "wb") as fh:
            np.savez(fh, train_x=arrays["train"][0], train_y=arrays["train"][1],
                     test_x=arrays["test"][0], test_y=arrays["test"][1],
                     mean=np.asarray(mean), std=np.asarray(std))
    except OSError:
        pass  # caching is an optimisation only
    return arrays, class_names, mean, std


def _tfds_root(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                              or os.path.join("~", "tensorflow_datasets"))


def _prepared_tfds_dir(name: str, data_dir: str | None) -> str:
    """The directory of the newest prepared version of tfds dataset ``name``,
    found without touching the network (tfds itself would retry downloads
    for minutes when offline)."""
    root = _tfds_root(data_dir)
    base = os.path.join(root, name)
    versions = []
    if os.path.isdir(base):
        for v in os.listdir(base):
            if os.path.isfile(os.path.join(base, v, "dataset_info.json")):
                try:
                    versions.append((tuple(int(p) for p in v.split(".")), v))
                except ValueError:
                    continue
    if not versions:
        raise DatasetError(
            f"{name} is not prepared in {root} (nothing is downloaded here). Prepare it once "
            f"online with: python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{name}', data_dir='{root}').download_and_prepare()\" "
            f"and pass --data-dir {root}, or use an image folder with --dataset folder:PATH")
    return os.path.join(base, max(versions)[1])


def _load_tfds(name: str, data_dir: str | None):
    path = _prepared_tfds_dir(name, data_dir)
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder_from_directory(path)
        arrays = {}
        for split in ("train", "test"):
            data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            arrays[split] = (np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int32))
        class_names = list(builder.info.features["label"].names)
    except DatasetError:
        raise
    except Exception as err:  # a broken prepared directory
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"cannot read prepared {name} in {path}: {msg}") from None
    mean, std = CIFAR_STATS[name]
    return arrays, class_names, mean, std


# -- splits and pipelines -------------------------------------------------------

def _num_validation(validation, n_train: int) -> int:
    if not validation:
        return 0
    v = float(validation)
    count = int(round(v * n_train)) if 0 < v < 1 else int(v)
    if count != v and not (0 < v < 1):
        raise DatasetError(f"validation must be a count or a fraction in (0, 1), got {validation}")
    if not 0 < count < n_train:
        raise DatasetError(f"validation of {validation} leaves no training examples "
                           f"(train has {n_train})")
    return count


class ImageData:
    """Decoded splits of one dataset (uint8 in memory) and its info."""

    def __init__(self, name: str, arrays: dict, class_names: list, mean, std, validation=0):
        train_x, train_y = arrays["train"]
        n_val = _num_validation(validation, len(train_x))
        perm = np.random.RandomState(_SPLIT_SEED).permutation(len(train_x))
        self._arrays = {"test": arrays["test"]}
        if n_val:
            val_idx, tr_idx = np.sort(perm[len(perm) - n_val:]), perm[:len(perm) - n_val]
            self._arrays["validation"] = (train_x[val_idx], train_y[val_idx])
        else:
            tr_idx = perm
        self._arrays["train"] = (train_x, train_y) if not n_val else \
            (train_x[np.sort(tr_idx)], train_y[np.sort(tr_idx)])
        half = len(tr_idx) // 2   # DARTS: split = floor(0.5 * num_train)
        self._arrays["train_a"] = (train_x[np.sort(tr_idx[:half])], train_y[np.sort(tr_idx[:half])])
        self._arrays["train_b"] = (train_x[np.sort(tr_idx[half:])], train_y[np.sort(tr_idx[half:])])
        self.info = DatasetInfo(
            name=name, num_classes=len(class_names), image_shape=tuple(int(s) for s in train_x.shape[1:]),
            num_examples={s: int(len(a[0])) for s, a in self._arrays.items()},
            mean=tuple(mean), std=tuple(std), class_names=list(class_names))
        self._tensors = {}

    @property
    def splits(self) -> tuple:
        return tuple(self._arrays)

    def arrays(self, split: str):
        """``(uint8 images NHWC, int32 labels)`` of ``split``."""
        self._check_split(split)
        return self._arrays[split]

    def _check_split(self, split):
        if split not in self._arrays:
            hint = " (pass validation=N to carve one from train)" if split == "validation" else ""
            raise DatasetError(f"unknown split {split!r}{hint}; available: {', '.join(self._arrays)}")

    def normalize(self, images):
        """uint8 or [0, 1] float images -> normalised float32 (a tf op)."""
        import tensorflow as tf
        x = tf.cast(images, tf.float32)
        if images.dtype == tf.uint8:
            x = x / 255.0
        return (x - tf.constant(self.info.mean, tf.float32)) / tf.constant(self.info.std, tf.float32)

    def batches_per_epoch(self, split: str, batch_size: int, drop_remainder: bool = False) -> int:
        """How many batches one epoch of ``split`` has."""
        n = int(self.info.num_examples[split])
        return n // batch_size if drop_remainder else -(-n // batch_size)

    def dataset(self, split: str, batch_size: int, *, augment: bool = False, cutout: int = 0,
                shuffle: bool | None = None, seed: int = 0, epoch: int | None = None,
                drop_remainder: bool = False, epochs: range | None = None,
                batches_per_epoch: int | None = None, crop: int | None = None):
        """A batched pipeline over ``split`` (one pass = one epoch).

        ``crop`` (with ``augment``): random ``crop``x``crop`` crops of the
        unpadded images instead of the padded full-size crop (cheaper steps;
        see ``TrainConfig.early_crop``).  ``shuffle`` defaults to
        ``augment``.  See the module docstring for how ``seed`` and
        ``epoch`` fix the order and the augmentation.  ``epochs``
        (a ``range``) instead gives those epochs one after another in one
        pipeline, each exactly as ``epoch=<int>`` would (for a
        :class:`BatchStream`); ``batches_per_epoch`` truncates every epoch."""
        import tensorflow as tf

        self._check_split(split)
        if batch_size < 1:
            raise DatasetError(f"batch size must be positive, got {batch_size}")
        shuffle = augment if shuffle is None else shuffle
        height, width = self.info.image_shape[:2]
        if crop is not None and not (augment and 0 < int(crop) <= min(height, width)):
            raise DatasetError(f"crop {crop} needs augment=True and a size in 1..{min(height, width)} "
                               f"(images are {height}x{width})")
        if split not in self._tensors:
            x, y = self._arrays[split]
            with tf.device("/cpu:0"):
                self._tensors[split] = (tf.constant(x), tf.constant(y))
        images, labels = self._tensors[split]
        n = int(labels.shape[0])
        seed = int(seed) & 0x7FFFFFFF
        mean = tf.constant(self.info.mean, tf.float32)
        std = tf.constant(self.info.std, tf.float32)
        pad, size = (4, None) if crop is None else (0, int(crop))

        def batch_fn(key, index, idx):
            x = tf.gather(images, idx)
            y = tf.gather(labels, idx)
            x = tf.cast(x, tf.float32) / 255.0
            if augment:
                rng = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + key, index])
                seeds = tf.random.experimental.stateless_split(rng, 4)
                x = _random_crop_flip(x, pad, seeds[0], seeds[1], size)
            x = (x - mean) / std
            if augment and cutout > 0:
                x = _cutout(x, int(cutout), seeds[2])
            return x, y

        def epoch_fn(key):
            if shuffle:
                order = tf.argsort(tf.random.stateless_uniform(
                    [n], seed=tf.stack([tf.cast(seed, tf.int64), key]), dtype=tf.float32))
            else:
                order = tf.range(n)
            batches = tf.data.Dataset.from_tensor_slices(order).batch(
                batch_size, drop_remainder=drop_remainder)
            if batches_per_epoch:
                batches = batches.take(int(batches_per_epoch))
            return batches.enumerate().map(lambda i, idx: batch_fn(key, i, idx),
                                           num_parallel_calls=tf.data.AUTOTUNE,
                                           deterministic=True)

        if epochs is not None:
            if epoch is not None:
                raise ValueError("give epoch or epochs, not both")
            keys = tf.data.Dataset.range(epochs.start, epochs.stop)
        elif epoch is None:
            keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        else:
            keys = tf.data.Dataset.from_tensors(tf.constant(int(epoch), tf.int64))
        ds = keys.flat_map(epoch_fn)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def sample(self, split: str, count: int | None, batch_size: int, seed: int = 0):
        """``count`` images of ``split`` (all: ``None``), not augmented, as
        batches: the first ones of a seeded shuffle, so every class is
        represented (folder data sets list the images class by class) and
        every call with the same seed gives the same images in the same order."""
        ds = self.dataset(split, batch_size, shuffle=True, seed=seed, epoch=0)
        if count is not None:
            ds = ds.unbatch().take(int(count)).batch(batch_size)
        return ds


class BatchStream:
    """Passes of a fixed number of batches over one long-lived iterator.

    A run iterates its pipelines through one iterator each (for training, a
    pipeline of all its epochs; for evaluation, a repeated one) instead of a
    new iterator per epoch: destroying a tf.data iterator blocks inter-op
    threads, and with TensorFlow's default pool (one thread per core, the
    fastest setting here) an iterator destroyed between epochs deadlocked
    long runs.  ``dataset`` may be a distributed dataset."""

    def __init__(self, dataset, batches_per_pass: int):
        if batches_per_pass < 1:
            raise ValueError(f"a pass needs at least one batch, got {batches_per_pass}")
        self.element_spec = dataset.element_spec
        self.batches_per_pass = int(batches_per_pass)
        self._iterator = iter(dataset)

    def next_pass(self):
        """An iterator over the next ``batches_per_pass`` batches (fewer only
        if the pipeline ends)."""
        return itertools.islice(self._iterator, self.batches_per_pass)


def is_multiworker(strategy) -> bool:
    import tensorflow as tf
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def distribute(dataset, strategy):
    """``dataset`` as ``strategy`` consumes it: unchanged on one local device,
    else ``strategy.experimental_distribute_dataset`` (per-replica batches;
    with several workers, each worker reads its own shard).  The one rule for
    training and search."""
    if strategy.num_replicas_in_sync == 1 and not is_multiworker(strategy):
        return dataset
    return strategy.experimental_distribute_dataset(dataset)


def _random_crop_flip(x, pad, crop_seed, flip_seed, size=None):
    """Per-sample random crop of the batch zero-padded by ``pad`` (``size`` x
    ``size``; default the image's own size) and horizontal flip."""
    import tensorflow as tf
    h, w = (x.shape[1], x.shape[2]) if size is None else (size, size)
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) if pad else x
    b = tf.shape(x)[0]
    room_h, room_w = x.shape[1] + 2 * pad - h + 1, x.shape[2] + 2 * pad - w + 1
    if room_h == room_w:
        offsets = tf.random.stateless_uniform([b, 2], seed=crop_seed, minval=0, maxval=room_h,
                                              dtype=tf.int32)
    else:
        offsets = tf.stack([tf.random.stateless_uniform([b], seed=crop_seed, maxval=room_h, dtype=tf.int32),
                            tf.random.stateless_uniform(
                                [b], seed=tf.random.experimental.stateless_fold_in(crop_seed, 1),
                                maxval=room_w, dtype=tf.int32)], axis=1)
    rows = offsets[:, :1] + tf.range(h)[None, :]
    cols = offsets[:, 1:] + tf.range(w)[None, :]
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    x = tf.gather(x, cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([b], seed=flip_seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)


def _cutout(x, size, seed):
    """Zero a ``size`` square per sample, centre uniform, clipped at the border
    (the reference Cutout: ``mask[y-s/2:y+s/2, x-s/2:x+s/2] = 0``)."""
    import tensorflow as tf
    shape = tf.shape(x)
    b, h, w = shape[0], shape[1], shape[2]
    cy = tf.random.stateless_uniform([b], seed=seed, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([b], seed=tf.random.experimental.stateless_fold_in(seed, 1),
                                     maxval=w, dtype=tf.int32)
    half = size // 2
    ys, xs = tf.range(h)[None, :], tf.range(w)[None, :]
    in_y = (ys >= cy[:, None] - half) & (ys < cy[:, None] + size - half)
    in_x = (xs >= cx[:, None] - half) & (xs < cx[:, None] + size - half)
    hole = in_y[:, :, None] & in_x[:, None, :]
    return tf.where(hole[:, :, :, None], tf.zeros_like(x), x)


# -- entry points -------------------------------------------------------------

def _parse_spec(spec: str):
    spec = str(spec).strip()
    if spec.startswith("folder:"):
        return "folder", spec[len("folder:"):]
    if spec.lower() in _TFDS_NAMES:
        return "tfds", spec.lower()
    if os.path.isdir(os.path.expanduser(spec)):
        raise DatasetError(f"unknown dataset {spec!r}; for an image folder write folder:{spec}")
    raise DatasetError(f"unknown dataset {spec!r}; use cifar10, cifar100 or folder:PATH")


_OPEN_CACHE: dict = {}


def open_dataset(spec: str, data_dir: str | None = None, validation=0) -> ImageData:
    """Decode ``spec`` (once per process) and carve its splits."""
    kind, what = _parse_spec(spec)
    key = (kind, os.path.abspath(os.path.expanduser(what)) if kind == "folder" else what,
           _tfds_root(data_dir) if kind == "tfds" else None)
    if key not in _OPEN_CACHE:
        if kind == "folder":
            _OPEN_CACHE[key] = _load_folder(what)
        else:
            _OPEN_CACHE[key] = _load_tfds(what, data_dir)
    arrays, class_names, mean, std = _OPEN_CACHE[key]
    name = f"folder:{what}" if kind == "folder" else what
    return ImageData(name, arrays, class_names, mean, std, validation=validation)


def dataset_info(spec: str, data_dir: str | None = None, validation=0) -> DatasetInfo:
    return open_dataset(spec, data_dir, validation).info


def load_dataset(spec: str, split: str, batch_size: int, augment: bool = False, cutout: int = 0,
                 validation=0, data_dir: str | None = None, seed: int = 0,
                 shuffle: bool | None = None, epoch: int | None = None,
                 drop_remainder: bool = False):
    """``(tf.data.Dataset of (normalised float32 NHWC images, int32 labels), DatasetInfo)``."""
    data = open_dataset(spec, data_dir, validation)
    ds = data.dataset(split, batch_size, augment=augment, cutout=cutout, shuffle=shuffle,
                      seed=seed, epoch=epoch, drop_remainder=drop_remainder)
    return ds, data.info


def darts_search_splits(spec: str, batch_size: int, data_dir: str | None = None, seed: int = 0,
                        augment: bool = True, cutout: int = 0, epoch: int | None = None):
    """DARTS search data: ``(weights_ds, alphas_ds, info)``, the two halves of
    train, both shuffled and (by default) augmented as in the reference."""
    data = open_dataset(spec, data_dir)
    common = dict(augment=augment, cutout=cutout, shuffle=True, epoch=epoch)
    return (data.dataset("train_a", batch_size, seed=seed, **common),
            data.dataset("train_b", batch_size, seed=seed + 1, **common),
            data.info)


def describe(info: DatasetInfo) -> str:
    """One line for logs."""
    counts = ", ".join(f"{k} {v}" for k, v in info.num_examples.items() if k not in ("train_a", "train_b"))
    h, w, c = info.image_shape
    return f"{info.name}: {info.num_classes} classes, {h}x{w}x{c}, {counts}"


def save_info(info: DatasetInfo, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info.to_dict(), fh, indent=2)
