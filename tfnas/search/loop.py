"""The DARTS search run: data halves, epochs, derivation, run directory.

:func:`run_darts_search` is what ``search.py --method darts`` calls; it writes
into a :class:`tfnas.rundir.RunDir`:

- ``config.json`` (the settings), ``metrics.jsonl`` (one record per epoch:
  train and alpha-split loss/accuracy, learning rate, the derived genotype,
  its width and depth, the softmaxed alphas),
- ``genotype.json`` / ``genotype.txt`` (the latest derived genotype, JSON and
  DARTS repr) and ``genotypes/epoch_NNN.json``,
- ``tb/`` (scalars, alpha heat maps, genotype text, cell diagrams),
- ``checkpoints/`` (weights, alphas, both optimizers, epoch; atomic).
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields

from tfnas.search.darts import DartsConfig, check_second_derivatives

PRESETS = {
    # The reference: 50 epochs, batch 64, C=16, 8 layers, full halves of train.
    "paper": dict(epochs=50, batch_size=64, init_channels=16, layers=8, steps_per_epoch=0,
                  eval_batches=0),
    # Minutes on a 2-core CPU (e.g. cifar10-mini): a smaller network and
    # 10 mini-batch pairs (320 + 320 images) per epoch.
    "small": dict(epochs=3, batch_size=32, init_channels=8, layers=5, steps_per_epoch=10,
                  eval_batches=4),
}


@dataclass
class SearchSettings:
    """Everything that defines a search run (saved as ``config.json``)."""

    method: str = "darts"
    preset: str = "small"
    dataset: str = "cifar10"
    data_dir: str | None = None
    space: str | dict = "darts"   # a name in tfnas.space.SPACES or a CellSpace dict
    epochs: int = 3
    batch_size: int = 32
    init_channels: int = 8
    layers: int = 5
    steps_per_epoch: int = 0      # 0: the whole weight half
    eval_batches: int = 0         # alpha-split evaluation batches per epoch (0: all)
    seed: int = 0
    deterministic: bool = False
    strategy: str = "default"
    low_memory: bool = False      # SearchNetwork(low_memory=...): slower, less memory
    darts: dict = field(default_factory=lambda: DartsConfig().to_dict())

    @classmethod
    def from_preset(cls, preset, **overrides) -> "SearchSettings":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = dict(PRESETS[preset], preset=preset)
        darts = DartsConfig().to_dict()
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in names:
                values[key] = value
            elif key in darts:
                darts[key] = value
            else:
                raise ValueError(f"unknown search setting {key!r}")
        config = DartsConfig.from_dict(darts)  # validates
        if config.order == 2 and config.hessian == "exact":
            check_second_derivatives(bool(values.get("low_memory")))
        values["darts"] = config.to_dict()
        return cls(**values)

    @classmethod
    def from_dict(cls, data) -> "SearchSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def darts_config(self) -> DartsConfig:
        return DartsConfig.from_dict(self.darts)

    @property
    def cell_space(self):
        from tfnas.space import SPACES, CellSpace
        if isinstance(self.space, dict):
            return CellSpace.from_dict(self.space)
        if self.space not in SPACES:
            raise ValueError(f"unknown cell space {self.space!r}; choose from {', '.join(SPACES)}")
        return SPACES[self.space]

    def network_meta(self) -> dict:
        """What a checkpoint must match to be resumed into this run."""
        return {"init_channels": self.init_channels, "layers": self.layers, "space": self.space,
                "order": self.darts["order"], "hessian": self.darts["hessian"],
                "dataset": self.dataset}


def build_search_network(settings: SearchSettings, num_classes: int, image_shape):
    """The (built) search network of ``settings``; second order with the
    exact hypergradient uses the differentiable BN path, ``low_memory`` the
    loop-and-recompute form."""
    from tfnas.search.supernet import SearchNetwork
    cfg = settings.darts_config
    bn_fused = False if (cfg.order == 2 and cfg.hessian == "exact") else None
    model = SearchNetwork(settings.init_channels, settings.layers, num_classes,
                          space=settings.cell_space, bn_fused=bn_fused,
                          low_memory=settings.low_memory)
    return model.build_for(tuple(image_shape))


def _alpha_heatmap_png(weights, operations, title) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(1.2 + 0.55 * len(operations), 1.0 + 0.28 * len(weights)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(weights, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(operations)), operations, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(weights)), [f"edge {i}" for i in range(len(weights))], fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, facecolor="white")
    return buffer.getvalue()


def _write_tensorboard(run, record, softmaxed, genotype, space, epoch):
    import tensorflow as tf
    writer = run.tensorboard_writer("search")
    with writer.as_default(step=epoch):
        for key in ("loss", "acc", "alpha_loss", "alpha_acc", "eval_alpha_loss", "eval_alpha_acc",
                    "lr", "normal_width", "normal_depth", "reduce_width", "reduce_depth"):
            if key in record and record[key] is not None:
                tf.summary.scalar(key, record[key])
        tf.summary.text("genotype", f"`{genotype.to_repr()}`")
        images = {f"alphas_{kind}": _alpha_heatmap_png(softmaxed[kind], space.operations,
                                                       f"softmax(alpha) {kind}, epoch {epoch}")
                  for kind in ("normal", "reduce")}
        try:
            from tfnas.diagrams import cell_figure_png_bytes
            for kind in ("normal", "reduce"):
                images[f"cell_{kind}"] = cell_figure_png_bytes(genotype.cell(kind),
                                                               title=f"{kind} cell, epoch {epoch}")
        except ImportError:  # pragma: no cover - diagrams are optional
            pass
        for name, png in images.items():
            tf.summary.image(name, tf.image.decode_png(png, channels=3)[None])
    writer.flush()


def _log(stream, text):
    print(text, file=stream, flush=True)


def run_darts_search(settings: SearchSettings, out_dir: str, *, resume: bool = False,
                     log=None) -> dict:
    """Run (or resume) a DARTS search; returns a summary dict."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfnas.data import BatchStream, distribute, open_dataset
    from tfnas.rundir import CheckpointError, RunDir
    from tfnas.search.darts import BilevelSearch
    from tfnas.search.derive import derive_genotype, genotype_record
    from tfnas.training import make_strategy

    log = log or sys.stdout
    run = RunDir(out_dir)
    if resume:
        if not os.path.isfile(run.config_path):
            raise FileNotFoundError(f"cannot resume: {run.config_path} not found")
        saved = run.read_config()
        epochs = settings.epochs if settings is not None else None
        settings = SearchSettings.from_dict(saved)
        if epochs:
            settings.epochs = epochs
    elif run.has_checkpoint():
        raise CheckpointError(f"{run.path} already holds a search; pass --resume to continue it "
                              "or choose another --out")
    if settings.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(settings.seed)
    strategy = make_strategy(settings.strategy)
    data = open_dataset(settings.dataset, settings.data_dir)
    info = data.info
    space = settings.cell_space
    cfg = settings.darts_config
    with strategy.scope():
        model = build_search_network(settings, info.num_classes, info.image_shape)
        search = BilevelSearch(model, cfg, strategy=strategy)
    if not resume:
        run.write_config(settings.to_dict())
    start_epoch = 0
    if resume:
        state = run.restore_checkpoint(search.trackables(), expect=settings.network_meta())
        if state is not None:
            start_epoch = int(state["epoch"])
            run.rewind_metrics("epoch", start_epoch - 1)
            _log(log, f"resumed {run.path} at epoch {start_epoch}")
        else:
            _log(log, f"{run.path} has no checkpoint yet; starting from epoch 0")

    _log(log, f"DARTS search (order {cfg.order}{', ' + cfg.hessian if cfg.order == 2 else ''}"
              f"{', low memory' if settings.low_memory else ''}) "
              f"on {info.name}: C={settings.init_channels}, {settings.layers} layers, "
              f"{model.count_weights():,} weights + {model.count_alphas()} alphas; "
              f"{settings.epochs} epochs, batch {settings.batch_size}; run directory {run.path}")

    # One iterator per pipeline for the whole run (see tfnas.data.BatchStream):
    # the two halves, all remaining epochs, each epoch cut to the same count.
    steps_per_epoch = min(data.batches_per_epoch(split, settings.batch_size, drop_remainder=True)
                          for split in ("train_a", "train_b"))
    if settings.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"dataset {settings.dataset} gives no batch of {settings.batch_size}")

    def stream(split, seed, batches, repeat=False, **kwargs):
        ds = data.dataset(split, settings.batch_size, seed=seed, shuffle=True,
                          batches_per_epoch=batches, **kwargs)
        if repeat:
            ds = ds.repeat()
        return BatchStream(distribute(ds, strategy), batches)

    remaining = range(start_epoch, settings.epochs)
    common = dict(augment=True, drop_remainder=True, epochs=remaining)
    weights_stream = stream("train_a", settings.seed, steps_per_epoch, **common)
    alphas_stream = stream("train_b", settings.seed + 1, steps_per_epoch, **common)
    # A fixed shuffled order (epoch 0), repeated: folder datasets are stored
    # class by class, so the first --eval-batches of an unshuffled split
    # would be one class.
    eval_batches = data.batches_per_epoch("train_b", settings.batch_size)
    if settings.eval_batches:
        eval_batches = min(eval_batches, settings.eval_batches)
    eval_stream = stream("train_b", settings.seed + 2, eval_batches, repeat=True, epoch=0)

    genotype = None
    record = None
    if len(remaining):
        # Otherwise the screen stays silent for minutes before the first progress line.
        _log(log, "compiling the search step: the first step traces and optimises the whole "
                  "supernet's graph, which takes minutes on a CPU (first order ~4 min at C=16, "
                  "8 layers; second order ~10 min with --hessian fd, longer with exact)")
    for epoch in remaining:
        t0 = time.time()
        lr = search.set_epoch(epoch, settings.epochs)
        sums = {}
        steps = 0
        for train_batch, val_batch in zip(weights_stream.next_pass(), alphas_stream.next_pass()):
            metrics = search.search_step(train_batch, val_batch)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            steps += 1
            if steps == 1 and epoch == start_epoch:
                _log(log, f"  first step (includes tracing) took {time.time() - t0:.0f} s")
            if steps % 10 == 0:
                _log(log, f"  epoch {epoch + 1} step {steps}: loss {sums['loss'] / steps:.3f} "
                          f"alpha-split loss {sums['alpha_loss'] / steps:.3f}")
        evaluation = search.evaluate(eval_stream.next_pass())
        softmaxed = model.softmax_alphas()
        genotype = derive_genotype(model.alphas_normal.numpy(), model.alphas_reduce.numpy(), space,
                                   name=f"search-epoch{epoch + 1}")
        gen = genotype_record(genotype)
        record = {"epoch": epoch, "lr": lr, "steps": steps,
                  **{k: v / steps for k, v in sums.items()},
                  "eval_alpha_loss": evaluation["loss"], "eval_alpha_acc": evaluation["acc"],
                  **gen, "alphas": {k: np.round(v, 6).tolist() for k, v in softmaxed.items()},
                  "alphas_raw": {"normal": model.alphas_normal.numpy().tolist(),
                                 "reduce": model.alphas_reduce.numpy().tolist()},
                  "seconds": time.time() - t0}
        os.makedirs(os.path.join(run.path, "genotypes"), exist_ok=True)
        text = json.dumps(genotype.to_dict(), indent=2) + "\n"
        from tfnas.rundir import atomic_write_text
        atomic_write_text(os.path.join(run.path, "genotypes", f"epoch_{epoch + 1:03d}.json"), text)
        atomic_write_text(os.path.join(run.path, "genotype.json"), text)
        atomic_write_text(os.path.join(run.path, "genotype.txt"), genotype.to_repr() + "\n")
        run.append_metrics(record)
        _write_tensorboard(run, record, softmaxed, genotype, space, epoch)
        run.save_checkpoint(search.trackables(),
                            {"epoch": epoch + 1, "meta": settings.network_meta()}, step=epoch + 1)
        _log(log, f"epoch {epoch + 1}/{settings.epochs}: lr {lr:.4f}  train loss {record['loss']:.3f} "
                  f"acc {100 * record['acc']:.1f}%  alpha-split loss {record['alpha_loss']:.3f} "
                  f"acc {100 * record['alpha_acc']:.1f}% (eval {100 * evaluation['acc']:.1f}%)  "
                  f"normal cell width {gen['normal_width']:g}c depth {gen['normal_depth']}  "
                  f"({record['seconds']:.0f} s)")
        _log(log, f"  genotype: {genotype.to_repr()}")
    run.close()
    if genotype is None:  # resumed a finished run
        records = run.read_metrics()
        if not records:
            raise CheckpointError(f"{run.path}: nothing to do and no metrics")
        record = records[-1]
        from tfnas.genotypes import Genotype
        genotype = Genotype.from_dict(record["genotype"])
    genotype_path = os.path.join(run.path, "genotype.json")
    train_cmd = (f"python train.py --genotype {genotype_path} --dataset {settings.dataset} "
                 f"--preset paper")
    return {"run_dir": run.path, "genotype": genotype.to_dict(), "repr": genotype.to_repr(),
            "genotype_file": genotype_path,
            **{k: record[k] for k in ("normal_width", "normal_depth", "reduce_width",
                                      "reduce_depth")},
            "epochs": settings.epochs,
            "final": {k: record.get(k) for k in ("epoch", "loss", "acc", "alpha_loss", "alpha_acc",
                                                 "eval_alpha_acc")},
            "train_command": train_cmd,
            "note": "search accuracy is not final accuracy: re-train the derived cell from "
                    "scratch with train.py"}
