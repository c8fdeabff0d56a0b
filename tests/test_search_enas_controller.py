"""The ENAS controller, the uniform sampler and REINFORCE (tfnas.search.enas_controller).

Distributions are checked against a float64 NumPy re-implementation of the
controller written from ENAS.md; sampling against those distributions with
fixed seeds and stated significance levels.  Training tests use a 2-node
space so that traces stay small.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tfnas.genotypes import Genotype
from tfnas.resolve import get_genotype
from tfnas.rundir import RunDir
from tfnas.search.enas_controller import (
    DARTS_SAMPLING_SPACE,
    ENAS_MICRO_OPS,
    ENAS_MICRO_SPACE,
    SAMPLING_SPACES,
    ArchitectureError,
    EnasController,
    Reinforce,
    ReinforceConfig,
    UniformSampler,
    arch_to_genotype,
    decision_sizes,
    genotype_to_arch,
    learned_op_bias_init,
    max_probability,
    normal_cell_op_bias,
    reference_loose_ends,
    validate_arch,
)
from tfnas.space import CellSpace

TINY = CellSpace(ENAS_MICRO_OPS, 2, "loose_ends")
MAX_POOL = ENAS_MICRO_OPS.index("max_pool_3x3")
# ENAS.md's values, per ENAS operation index
ENAS_NORMAL_BIAS = np.array([0.25, 0.25, -0.25, -0.25, -0.25])


@pytest.fixture(scope="module")
def enas_controller():
    """Shared by tests that do not change its weights (its traces are reused)."""
    return EnasController("enas", seed=0)


def _random_archs(space, count, seed):
    rng = np.random.default_rng(seed)
    sizes = np.array(decision_sizes(space))
    return (rng.random((count, 2, len(sizes))) * sizes).astype(np.int32)


# -- NumPy reference (float64), written from ENAS.md ---------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def reference_distributions(controller, arch, normal_bias):
    """Per cell and position, the distribution of the value at that position
    given the earlier values of ``arch``; and the number of LSTM steps."""
    w = {v.name: np.asarray(v.numpy(), np.float64) for v in controller.trainable_variables}
    tanh_c, reduce = controller.tanh_constant, controller.op_tanh_reduce
    nodes = controller.space.num_nodes
    lstm = {"c": np.zeros(controller.lstm_size), "h": np.zeros(controller.lstm_size), "steps": 0}

    def step(x):
        i, f, o, g = np.split(np.concatenate([x, lstm["h"]]) @ w["w_lstm"], 4)
        lstm["c"] = _sigmoid(i) * np.tanh(g) + _sigmoid(f) * lstm["c"]
        lstm["h"] = _sigmoid(o) * np.tanh(lstm["c"])
        lstm["steps"] += 1
        return lstm["h"]

    dists = [[None] * (4 * nodes) for _ in range(2)]
    for cell in range(2):  # the reduction cell continues from the normal cell's state
        anchors, keys = [], []
        for _ in range(2):
            h = step(w["g_emb"][0])
            anchors.append(np.zeros_like(h))
            keys.append(h @ w["w_attn_1"])
        for node in range(nodes):
            x = w["g_emb"][0]
            for pos in (4 * node, 4 * node + 2):
                h = step(x)
                logits = (np.tanh(np.stack(keys) + h @ w["w_attn_2"]) @ w["v_attn"])[:, 0]
                dists[cell][pos] = _softmax(tanh_c * np.tanh(logits))
                x = anchors[arch[cell][pos]]
            for pos in (4 * node + 1, 4 * node + 3):
                h = step(x)
                logits = tanh_c / reduce * np.tanh(h @ w["w_soft"] + w["b_soft"])
                dists[cell][pos] = _softmax(logits + (normal_bias if cell == 0 else 0.0))
                x = w["w_emb"][arch[cell][pos]]
            h = step(x)
            anchors.append(h)
            keys.append(h @ w["w_attn_1"])
    return dists, lstm["steps"]


# -- spaces, biases, step count ------------------------------------------------

def test_spaces_and_operation_biases():
    assert ENAS_MICRO_SPACE.operations[-1] == "skip_connect" and ENAS_MICRO_SPACE.num_nodes == 5
    assert ENAS_MICRO_SPACE.concat == "loose_ends"
    assert DARTS_SAMPLING_SPACE.num_nodes == 4 and DARTS_SAMPLING_SPACE.concat == "all"
    assert "none" not in DARTS_SAMPLING_SPACE.operations
    assert SAMPLING_SPACES == {"enas": ENAS_MICRO_SPACE, "darts": DARTS_SAMPLING_SPACE}
    assert learned_op_bias_init(ENAS_MICRO_SPACE) == (10, 10, 0, 0, 0)
    np.testing.assert_array_equal(normal_cell_op_bias(ENAS_MICRO_SPACE), ENAS_NORMAL_BIAS)
    darts = dict(zip(DARTS_SAMPLING_SPACE.operations, learned_op_bias_init(DARTS_SAMPLING_SPACE)))
    assert darts == {"max_pool_3x3": 0, "avg_pool_3x3": 0, "skip_connect": 0, "sep_conv_3x3": 10,
                     "sep_conv_5x5": 10, "dil_conv_3x3": 10, "dil_conv_5x5": 10}
    controller = EnasController("darts", seed=0)
    np.testing.assert_array_equal(controller.b_soft.numpy(), [0, 0, 0, 10, 10, 10, 10])
    assert decision_sizes(TINY) == (2, 5, 2, 5, 3, 5, 3, 5)
    with pytest.raises(ValueError, match="one value per operation"):
        EnasController(TINY, op_bias_init=[1.0, 2.0])


def test_lstm_steps_per_architecture(enas_controller):
    arch = _random_archs(ENAS_MICRO_SPACE, 1, seed=1)[0]
    assert int(enas_controller.rollout(arch).lstm_steps) == 54  # ENAS.md
    assert enas_controller.lstm_steps_per_architecture == 54
    assert reference_distributions(enas_controller, arch, ENAS_NORMAL_BIAS)[1] == 54
    darts = EnasController("darts", seed=0)
    assert int(darts.rollout(_random_archs(DARTS_SAMPLING_SPACE, 1, 2)[0]).lstm_steps) == 44


# -- distributions, log-probabilities, entropies -------------------------------

@pytest.mark.parametrize("space", ["enas", "darts"])
def test_distributions_match_numpy_reference(space, enas_controller):
    controller = enas_controller if space == "enas" else EnasController(space, seed=3)
    space = controller.space
    normal_bias = np.where([("conv" in op) for op in space.operations], 0.25, -0.25)
    archs = _random_archs(space, 3, seed=4)
    probs = controller.decision_probabilities(archs).numpy()  # one batched pass
    sizes = decision_sizes(space)
    for arch, got in zip(archs, probs):
        want, _ = reference_distributions(controller, arch, normal_bias)
        for cell in range(2):
            for pos, size in enumerate(sizes):
                np.testing.assert_allclose(got[cell, pos, :size], want[cell][pos], atol=2e-6)
                assert not got[cell, pos, size:].any()  # padding is exactly 0


def _log_prob_entropy(probs, arch):
    """From per-decision distributions, in float64."""
    p = np.asarray(probs, np.float64)
    chosen = np.take_along_axis(p, np.asarray(arch)[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return np.log(chosen).sum(axis=(-1, -2)), -plogp.sum(axis=(-1, -2, -3))


def test_sampled_log_prob_and_entropy_match_the_distributions(enas_controller):
    archs, log_prob, entropy = enas_controller.sample_many(32)
    for arch in archs.numpy():
        validate_arch(arch, ENAS_MICRO_SPACE)
    want_lp, want_ent = _log_prob_entropy(enas_controller.decision_probabilities(archs), archs)
    np.testing.assert_allclose(log_prob, want_lp, rtol=1e-5)
    np.testing.assert_allclose(entropy, want_ent, rtol=1e-5)
    arch, log_prob, entropy = enas_controller.sample()
    assert arch.shape == (2, 20) and arch.dtype == tf.int32
    want_lp, want_ent = _log_prob_entropy(enas_controller.decision_probabilities(arch), arch)
    np.testing.assert_allclose([log_prob, entropy], [want_lp, want_ent], rtol=1e-5)


def test_eager_and_traced_log_prob_agree():
    controller = EnasController(TINY, seed=5)
    archs = _random_archs(TINY, 4, seed=5)
    eager = controller.log_prob(archs).numpy()
    traced = tf.function(controller.log_prob)(tf.constant(archs)).numpy()
    np.testing.assert_allclose(traced, eager, rtol=1e-6)
    np.testing.assert_allclose(controller.log_prob(archs[0]), eager[0], rtol=1e-6)
    np.testing.assert_allclose(controller(archs), eager, rtol=1e-6)  # Keras call


# -- sampling frequencies ------------------------------------------------------

def _sharp_controller(seed):
    """Strongly non-uniform, position-dependent distributions: a wrong
    distribution or an off-by-one in sampling shows in the frequencies."""
    controller = EnasController(TINY, lstm_size=16, tanh_constant=3.0, op_tanh_reduce=1.0,
                                seed=seed)
    for var in controller.trainable_variables:
        var.assign(var * 10.0)
    return controller


def _frequency_z_scores(archs, probs):
    """Per (cell, position, value): observed count minus the sum of the
    conditional probabilities of that value, over the standard deviation
    (a martingale: about N(0, 1) when the samples follow ``probs``)."""
    onehot = np.eye(probs.shape[-1])[archs]
    expected = probs.sum(axis=0)
    sd = np.sqrt((probs * (1 - probs)).sum(axis=0))
    valid = sd > 1e-3
    return (onehot.sum(axis=0) - expected)[valid] / sd[valid]


def test_sampling_frequencies_follow_the_distributions():
    controller = _sharp_controller(seed=11)
    archs = controller.sample_many(20000)[0].numpy()
    probs = controller.decision_probabilities(archs).numpy().astype(np.float64)
    # First decision (input 1 of node 2, normal cell): a fixed distribution.
    first = probs[0, 0, 0, :2]
    assert 0.05 < first.min()  # both choices occur: the test has power
    counts = np.bincount(archs[:, 0, 0], minlength=2)
    assert stats.chisquare(counts, first / first.sum() * len(archs)).pvalue > 1e-3
    # Every decision given its prefix; Bonferroni over the (position, value)
    # cells at family-wise significance 1e-3.
    z = _frequency_z_scores(archs, probs)
    bound = stats.norm.isf(1e-3 / (2 * z.size))
    assert np.abs(z).max() < bound
    # The same statistic rejects another controller's distributions.
    other = _sharp_controller(seed=12).decision_probabilities(archs).numpy().astype(np.float64)
    assert np.abs(_frequency_z_scores(archs, other)).max() > 3 * bound


def test_uniform_sampler():
    sampler = UniformSampler(TINY, seed=5)
    archs, log_prob, entropy = sampler.sample_many(6000)
    sizes = np.array(decision_sizes(TINY))
    want = np.log(sizes).sum() * 2
    np.testing.assert_allclose(entropy, want, rtol=1e-6)
    np.testing.assert_allclose(log_prob, -want, rtol=1e-6)
    archs = archs.numpy()
    for cell in range(2):
        for pos, size in enumerate(sizes):
            counts = np.bincount(archs[:, cell, pos], minlength=size)
            assert len(counts) == size  # nothing out of range
            # 16 tests; each at 1e-4 (family-wise < 2e-3)
            assert stats.chisquare(counts).pvalue > 1e-4
    lp, ent, probs = sampler.evaluate(archs[:3])
    np.testing.assert_allclose(ent, want, rtol=1e-6)
    np.testing.assert_allclose(probs.numpy()[0, 0, 4, :3], [1 / 3] * 3)
    np.testing.assert_allclose(lp, -want, rtol=1e-6)
    arch, lp, _ = sampler.sample()
    assert arch.shape == (2, 8) and float(lp) == pytest.approx(-want)


# -- genotypes -------------------------------------------------------------------

@pytest.mark.parametrize("space", [ENAS_MICRO_SPACE, DARTS_SAMPLING_SPACE])
def test_genotype_round_trip(space):
    for arch in _random_archs(space, 50, seed=6):
        genotype = arch_to_genotype(arch, space)
        np.testing.assert_array_equal(genotype_to_arch(genotype, space), arch)
        for kind, row in zip(("normal", "reduce"), arch):
            cell = genotype.cell(kind)
            assert cell.edges == tuple((space.operations[row[i + 1]], row[i])
                                       for i in range(0, len(row), 2))
            if space.concat == "all":
                assert cell.concat == (2, 3, 4, 5)
            else:  # loose ends: the reference's, without the input nodes
                assert cell.concat == tuple(n for n in reference_loose_ends(row) if n >= 2)


def test_loose_ends_of_a_known_cell():
    # node 2 <- (0, 1); node 3 <- (2, 2); nodes 4, 5, 6 <- (3, 0)
    row = [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 0, 4, 3, 0, 0, 1, 3, 2, 0, 3]
    arch = np.array([row, row], np.int32)
    genotype = arch_to_genotype(arch, "enas", name="known")
    assert genotype.normal_concat == (4, 5, 6) and genotype.name == "known"
    assert genotype.normal[:4] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
                                   ("avg_pool_3x3", 2), ("max_pool_3x3", 2))
    # no node uses input node 0: the reference concatenates it, the genotype cannot
    row2 = [1, 0, 1, 4, 2, 2, 2, 3, 3, 0, 1, 1, 3, 2, 1, 3, 3, 1, 1, 2]
    assert reference_loose_ends(row2) == (0, 4, 5, 6)
    assert arch_to_genotype(np.array([row2, row]), "enas").normal_concat == (4, 5, 6)


def test_genotype_conversion_errors():
    darts_v2 = get_genotype("DARTS_V2")
    arch = genotype_to_arch(darts_v2, "darts")  # a published cell of the DARTS space
    assert arch_to_genotype(arch, "darts") == darts_v2
    with pytest.raises(ArchitectureError, match="nodes"):
        genotype_to_arch(darts_v2, "enas")
    with pytest.raises(ArchitectureError, match="concat"):
        genotype_to_arch(darts_v2.replace(normal_concat=(4, 5)), "darts")
    tiny = Genotype([("dil_conv_3x3", 0), ("skip_connect", 1)] * 2, [3],
                    [("skip_connect", 0), ("skip_connect", 1)] * 2, [3])
    with pytest.raises(ArchitectureError, match="outside the space"):
        genotype_to_arch(tiny, TINY)
    with pytest.raises(ArchitectureError, match="shape"):
        arch_to_genotype(np.zeros((2, 8), np.int32), "enas")
    bad = np.zeros((2, 20), np.int32)
    bad[1, 5] = 5
    with pytest.raises(ArchitectureError, match="reduce cell, node 3: operation 5"):
        arch_to_genotype(bad, "enas")
    bad[1, 5], bad[0, 4] = 0, 3
    with pytest.raises(ArchitectureError, match="normal cell, node 3: input 3"):
        validate_arch(bad, ENAS_MICRO_SPACE)


# -- tracing -------------------------------------------------------------------------

def test_sampling_and_updates_trace_once():
    controller = EnasController(TINY, seed=1)
    for _ in range(30):
        controller.sample()
    for n in (7, 3, 7):
        assert controller.sample_many(n)[0].shape == (n, 2, 8)
    assert controller.sampling_trace_count == 1  # one trace for every batch size
    trainer = Reinforce(controller, ReinforceConfig(samples_per_update=4))
    for _ in range(3):
        trainer.update(lambda arch: float(arch.numpy()[0, 0]))
    assert controller.sampling_trace_count == 1
    assert trainer._apply_fn.experimental_get_tracing_count() == 1

    def reward(arch):
        return tf.cast(arch[0, 0], tf.float32)
    for _ in range(3):
        trainer.update(reward, traced=True)
    assert trainer._traced_updates[reward].experimental_get_tracing_count() == 1
    sampler = UniformSampler(TINY, seed=0)
    for _ in range(10):
        sampler.sample()
    assert sampler.sampling_trace_count == 1


# -- REINFORCE -------------------------------------------------------------------------

def _python_reward(arch):
    """A deterministic reward of the architecture (a NumPy value)."""
    arch = np.asarray(arch)
    return np.float64((arch[:, 1::2] == MAX_POOL).mean() + 0.1 * (arch[:, 0::2] == 1).mean())


def test_one_update_matches_the_reference_formulas():
    controller = EnasController(TINY, seed=2)
    trainer = Reinforce(controller)
    trainer.baseline.assign(0.3)
    before = [v.numpy().astype(np.float64) for v in controller.trainable_variables]
    stats_ = trainer.update(_python_reward)
    archs = trainer.last_archs
    assert archs.shape == (10, 2, 8)
    reward = np.array([_python_reward(a) for a in archs])
    np.testing.assert_allclose(trainer.last_rewards, reward, rtol=1e-6)
    fresh = EnasController(TINY, seed=2)  # the old weights
    log_prob, entropy, _ = fresh.evaluate(archs)
    total = reward + 1e-4 * entropy.numpy()
    baseline, adv = 0.3, []
    for r in total:  # baseline first, then the advantage with the new baseline
        baseline -= (1 - 0.99) * (baseline - r)
        adv.append(r - baseline)
    adv = np.array(adv)
    with tf.GradientTape() as tape:  # the mean of the samples' gradients
        loss = tf.reduce_mean(-fresh.log_prob(archs) * tf.constant(adv, tf.float32))
    grads = tape.gradient(loss, fresh.trainable_variables)
    assert stats_["baseline"] == pytest.approx(baseline, rel=1e-6)
    assert stats_["loss"] == pytest.approx(np.mean(-log_prob.numpy() * adv), rel=1e-4, abs=1e-7)
    assert stats_["reward"] == pytest.approx(reward.mean(), rel=1e-6)
    assert stats_["entropy"] == pytest.approx(entropy.numpy().mean(), rel=1e-6)
    adam = trainer.optimizer
    assert (adam.beta_1, adam.beta_2, adam.epsilon, adam.amsgrad) == (0.0, 0.999, 1e-3, False)
    assert adam.global_clipnorm is None and adam.clipnorm is None and adam.weight_decay is None
    # First Adam step with beta_1 = 0: m = g, v = (1 - beta_2) g^2, and
    # delta = -lr * sqrt(1 - beta_2) * g / (sqrt(v) + eps).
    for old, new, grad in zip(before, controller.trainable_variables, grads):
        grad = grad.numpy().astype(np.float64)
        step = -0.0035 * np.sqrt(1e-3) * grad / (np.sqrt(1e-3) * np.abs(grad) + 1e-3)
        np.testing.assert_allclose(new.numpy() - old, step, atol=2e-7)


def _share(controller, positions_value):
    positions, value = positions_value
    archs = controller.sample_many(2000)[0].numpy()
    return float((archs[:, :, positions] == value).mean())


@pytest.mark.slow
def test_reinforce_learns_an_operation():
    """Without the reference's conv biases and with sharper operation logits
    (tanh constant 2.5), REINFORCE with the reference optimiser puts >= 90% of
    the edges on max_pool within 250 updates (about 70 with seeds 3, 7, 8)."""
    controller = EnasController(TINY, tanh_constant=2.5, op_tanh_reduce=1.0,
                                op_bias_init=[0.0] * 5, normal_op_bias=[0.0] * 5, seed=3)
    trainer = Reinforce(controller)
    ops = slice(1, None, 2)

    def reward(arch):
        return tf.reduce_mean(tf.cast(tf.equal(arch[:, ops], MAX_POOL), tf.float32))
    assert _share(controller, (ops, MAX_POOL)) < 0.3
    for _ in range(25):
        for _ in range(10):
            trainer.update(reward, traced=True)
        if _share(controller, (ops, MAX_POOL)) >= 0.9:
            break
    assert _share(controller, (ops, MAX_POOL)) >= 0.9


@pytest.mark.slow
def test_reinforce_learns_an_input():
    """With tanh constant 2.5 (reference otherwise), >= 90% of the inputs
    become node 1 within 250 updates (about 90 with seeds 3, 7, 8); Python rewards."""
    controller = EnasController(TINY, tanh_constant=2.5, seed=3)
    trainer = Reinforce(controller)
    inputs = slice(0, None, 2)
    assert _share(controller, (inputs, 1)) < 0.5
    for _ in range(25):
        for _ in range(10):
            trainer.update(lambda arch: (arch.numpy()[:, inputs] == 1).mean())
        if _share(controller, (inputs, 1)) >= 0.9:
            break
    assert _share(controller, (inputs, 1)) >= 0.9


@pytest.mark.slow
def test_reference_constants_bound_what_the_controller_learns():
    """The reference controller, rewarded for input 1 and max_pool: inputs
    reach 90% of the bound the tanh constant allows; the convolutions' logits
    never move (saturated tanh), so max_pool never passes a convolution."""
    controller = EnasController(TINY, seed=4)
    trainer = Reinforce(controller)
    conv_columns = [ENAS_MICRO_OPS.index("sep_conv_3x3"), ENAS_MICRO_OPS.index("sep_conv_5x5")]
    frozen = (controller.w_soft.numpy()[:, conv_columns], controller.b_soft.numpy()[conv_columns])
    inputs, ops = slice(0, None, 2), slice(1, None, 2)

    def reward(arch):
        return (tf.reduce_mean(tf.cast(tf.equal(arch[:, inputs], 1), tf.float32))
                + tf.reduce_mean(tf.cast(tf.equal(arch[:, ops], MAX_POOL), tf.float32)))
    for _ in range(300):
        trainer.update(reward, traced=True)
    np.testing.assert_array_equal(controller.w_soft.numpy()[:, conv_columns], frozen[0])
    np.testing.assert_array_equal(controller.b_soft.numpy()[conv_columns], frozen[1])
    ceiling = np.mean([max_probability(k, 1.10) for k in (2, 2, 3, 3)])  # per input decision
    assert _share(controller, (inputs, 1)) >= 0.9 * ceiling
    probs = controller.decision_probabilities(controller.sample_many(200)[0]).numpy()
    op_probs = probs[:, :, ops, :5]
    assert (op_probs[..., MAX_POOL] <= op_probs[..., conv_columns].min(axis=-1) + 1e-6).all()
    # the operation was learnt up to (almost) a tie with the convolutions
    reduce_ops = op_probs[:, 1]
    assert (reduce_ops[..., MAX_POOL] > 0.9 * reduce_ops[..., conv_columns[0]]).mean() > 0.5
    input_probs = probs[:, :, inputs]
    for pos, k in enumerate((2, 2, 3, 3)):
        assert input_probs[:, :, pos, :k].max() <= max_probability(k, 1.10) + 1e-6


# -- checkpoints and configuration ------------------------------------------------------

def _trainer(seed):
    return Reinforce(EnasController(TINY, seed=seed), ReinforceConfig(samples_per_update=3))


def _assert_same_state(a, b):
    for x, y in zip(a.controller.variables + a.optimizer.variables,
                    b.controller.variables + b.optimizer.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert float(a.baseline) == float(b.baseline)
    np.testing.assert_array_equal(a.controller.rng.state.numpy(), b.controller.rng.state.numpy())


def test_checkpoint_round_trip(tmp_path):
    saved = _trainer(seed=1)
    for _ in range(2):
        saved.update(_python_reward)
    path = tf.train.Checkpoint(**saved.trackables()).write(str(tmp_path / "ckpt"))
    run = RunDir(str(tmp_path / "run"))  # the run loop's checkpoints
    run.save_checkpoint(saved.trackables(), {"epoch": 1}, step=1)
    restored = _trainer(seed=2)
    tf.train.Checkpoint(**restored.trackables()).read(path).assert_consumed()
    from_run = _trainer(seed=3)
    assert run.restore_checkpoint(from_run.trackables())["epoch"] == 1
    for other in (restored, from_run):
        _assert_same_state(saved, other)
    samples = [trainer.controller.sample_many(5) for trainer in (saved, restored, from_run)]
    for a, b, c in zip(*samples):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())
    # the optimizer's moments came back too: the next update is the same
    assert saved.update(_python_reward) == restored.update(_python_reward)
    _assert_same_state(saved, restored)


def test_uniform_sampler_checkpoint(tmp_path):
    sampler = UniformSampler(TINY, seed=1)
    sampler.sample_many(3)
    path = tf.train.Checkpoint(**sampler.trackables()).write(str(tmp_path / "ckpt"))
    restored = UniformSampler(TINY, seed=2)
    tf.train.Checkpoint(**restored.trackables()).read(path).assert_consumed()
    np.testing.assert_array_equal(sampler.sample_many(4)[0], restored.sample_many(4)[0])


def test_config_round_trips():
    controller = EnasController(TINY, tanh_constant=None, normal_op_bias=[0.0] * 5, seed=7)
    clone = EnasController.from_config(controller.get_config())
    assert clone.get_config() == controller.get_config()
    assert clone.space == TINY and clone.tanh_constant is None
    for a, b in zip(controller.variables, clone.variables):  # same seed, same weights
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    config = ReinforceConfig(samples_per_update=4)
    assert ReinforceConfig.from_dict(config.to_dict()) == config
    assert ReinforceConfig().to_dict() == {
        "learning_rate": 0.0035, "beta_1": 0.0, "beta_2": 0.999, "epsilon": 1e-3,
        "entropy_weight": 1e-4, "baseline_decay": 0.99, "samples_per_update": 10}
    with pytest.raises(ValueError, match="samples_per_update"):
        ReinforceConfig(samples_per_update=0)
    with pytest.raises(ValueError, match="unknown sampling space"):
        EnasController("nasnet")
