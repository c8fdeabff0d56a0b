"""The search step under tf.distribute: two logical CPU devices, alphas
replicated and updated identically (run in a subprocess: the devices must be
split before TensorFlow initialises)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    from tfnas.runtime import quiet_tensorflow, split_cpu
    quiet_tensorflow()
    split_cpu(2)
    import numpy as np
    import tensorflow as tf
    import keras
    from tfnas.genotypes import DARTS_OPS
    from tfnas.search.darts import BilevelSearch, DartsConfig
    from tfnas.search.supernet import SearchNetwork
    from tfnas.space import CellSpace

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = SearchNetwork(4, 3, 10, space=CellSpace(DARTS_OPS, 1, "all"),
                              low_memory=sys.argv[1] == "low").build_for((8, 8, 3))
        search = BilevelSearch(model, DartsConfig(order=int(sys.argv[2]), hessian="fd"), strategy=strategy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, size=(32,)).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True)
    train = strategy.experimental_distribute_dataset(ds.take(2))
    val = strategy.experimental_distribute_dataset(ds.skip(2))
    before = model.alphas_normal.numpy().copy()
    losses = []
    for tb, vb in zip(train, val):
        losses.append(float(search.search_step(tb, vb)["loss"]))
    replicas = [v.numpy().tolist() for v in model.alphas_normal.value.values]
    weights = [v.numpy().tolist() for v in model.weight_variables[0].value.values]
    # BN statistics of the first edge(s) of the last cell (a reduction cell)
    cell = model.cells[-1]
    edges = cell.edge_stacks[0] if cell.low_memory else cell.edges[0]
    stats = [v.numpy().tolist() for v in edges.non_trainable_variables[0].value.values]
    print(json.dumps({"replicas": replicas, "weights": weights, "before": before.tolist(),
                      "stats": stats,
                      "losses": losses, "n": strategy.num_replicas_in_sync,
                      "devices": [v.device for v in model.alphas_normal.value.values]}))
""")


# Second order (its virtual step and finite differences cross replicas) in
# the default form; the low-memory form's own code is the network, so first
# order suffices there and costs half the trace.
@pytest.mark.slow
@pytest.mark.parametrize("form, order", [("unrolled", 2), ("low", 1)])
def test_alphas_identical_on_two_replicas(form, order):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", SCRIPT, form, str(order)], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 2 and len(set(res["devices"])) == 2
    r0, r1 = res["replicas"]
    assert r0 == r1                      # identical on both replicas
    assert r0 != res["before"]           # and updated
    assert res["weights"][0] == res["weights"][1]
    assert res["stats"][0] == res["stats"][1] and any(res["stats"][0])  # written, and alike
    assert all(l == l for l in res["losses"]) and len(res["losses"]) == 2  # noqa: E741
