"""The ENAS child step under tf.distribute: two logical CPU devices, every
replica training the same sampled architecture (run in a subprocess: the
devices must be split before TensorFlow initialises)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ENAS_SCRIPT = textwrap.dedent("""
    import json, sys
    from tfnas.runtime import quiet_tensorflow, split_cpu
    quiet_tensorflow()
    split_cpu(2)
    import tensorflow as tf
    import keras
    from tfnas.data import open_dataset
    from tfnas.search.base import SearchData
    from tfnas.search.driver import build_method
    from tfnas.search.settings import SearchSettings
    from tfnas.space import CellSpace
    from tfnas.search.enas_controller import ENAS_MICRO_OPS

    keras.utils.set_random_seed(0)
    space = CellSpace(ENAS_MICRO_OPS, 2, "loose_ends").to_dict()
    settings = SearchSettings.from_preset("small", method="enas", space=space, init_channels=4,
                                          layers=3, batch_size=8, steps_per_epoch=2,
                                          controller_updates=1, samples_per_update=2, derive_samples=2,
                                          dataset="folder:" + sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = open_dataset(settings.dataset, validation=0.1)
    method = build_method(settings, data.info, strategy)
    method.open_streams(SearchData(data, settings, strategy, range(0, 1)))
    before = method.child.trainable_variables[0].numpy().copy()
    record = method.run_epoch(0, None)
    genotype = method.derive()
    weights = [v.numpy().tolist() for v in method.child.trainable_variables[0].value.values]
    print(json.dumps({"weights": weights, "before": before.tolist(), "loss": record["loss"],
                      "reward": record["controller_reward"], "n": strategy.num_replicas_in_sync,
                      "genotype": genotype.to_dict()}))
""")


@pytest.mark.slow
def test_enas_child_steps_on_two_replicas(cifar_mini):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", ENAS_SCRIPT, str(cifar_mini)], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 2
    assert res["weights"][0] == res["weights"][1] and res["weights"][0] != res["before"]
    assert res["loss"] == res["loss"] and 0 <= res["reward"] <= 1
