import os
import platform
import subprocess
import sys

import pytest

from tfnas.runtime import inter_op_threads

QUIET_IMPORT = """
from tfnas.runtime import quiet_tensorflow
quiet_tensorflow()
import sys
assert "tensorflow" not in sys.modules  # nothing imported eagerly
import tensorflow as tf
print(int(tf.constant(41) + 1))
print("after", file=sys.stderr)
"""


def test_tensorflow_start_up_noise_is_hidden_but_stderr_still_works():
    proc = subprocess.run([sys.executable, "-c", QUIET_IMPORT], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"
    # TF prints cudart/cuInit/absl lines at import and device set-up; none may reach the user
    assert proc.stderr == "after\n"


def test_inter_op_pool_is_one_per_core_unless_iterators_come_and_go(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert inter_op_threads() == 2                            # long-lived iterators: fastest
    assert inter_op_threads(iterators_per_epoch=True) >= 8    # the deadlock work-around
    assert inter_op_threads(3) == 3                           # an explicit request wins
    assert inter_op_threads(3, iterators_per_epoch=True) == 3


ARENAS = """
import ctypes, sys, threading
from tfnas.runtime import limit_malloc_arenas
mode = sys.argv[1]
applied = limit_malloc_arenas(None if mode == "default" else int(mode)) if mode != "plain" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(6)

def worker():
    # Each thread mallocs while the others hold theirs: glibc gives it an arena.
    block = libc.malloc(50_000)
    barrier.wait()
    libc.free(block)

threads = [threading.Thread(target=worker) for _ in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stdout.flush()
libc.malloc_info(0, ctypes.c_void_p.in_dll(libc, "stdout"))
libc.fflush(None)
print("applied", applied)
"""


def _heaps(mode, env):
    proc = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.count("<heap nr="), proc.stdout.strip().splitlines()[-1]


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc arenas are a glibc feature")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _heaps("1", env) == (1, "applied True")
    assert _heaps("2", env) == (2, "applied True")
    # by default one arena per inter-op thread (the 6 threads and the main one: at most 7)
    assert _heaps("default", env) == (min(inter_op_threads(), 7), "applied True")
    heaps, applied = _heaps("plain", env)
    assert heaps > 2 and applied == "applied False"      # threads got arenas of their own
    heaps, applied = _heaps("1", dict(env, MALLOC_ARENA_MAX="3"))
    assert applied == "applied False" and heaps > 1      # the user's setting wins


GRAPPLER = """
import sys
import tensorflow as tf
if sys.argv[1] == "light":
    from tfnas.runtime import configure_graph_optimizer
    assert configure_graph_optimizer()

@tf.function
def f(x):
    for _ in range(20):
        x = tf.nn.relu(tf.matmul(x, x) * 0.5 + 1.0)
    return tf.reduce_sum(x)

print(float(f(tf.ones((4, 4)) * 0.1)))
"""


@pytest.mark.parametrize("mode", ["default", "light"])
def test_light_graph_optimizer_runs_one_round_without_memory_optimizer(mode):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "meta_optimizer=1"}
    proc = subprocess.run([sys.executable, "-c", GRAPPLER, mode], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    passes = [line.split("] ", 1)[1].split(":", 1)[0] for line in proc.stderr.splitlines()
              if "meta_optimizer.cc" in line and "Graph size after" in line]
    assert "constant_folding" in passes  # Grappler ran on f, and this test sees its passes
    if mode == "default":  # TensorFlow's: two rounds, memory and layout optimisers on
        assert passes.count("constant_folding") == 2
        assert "memory_optimizer" in passes and "layout" in passes
    else:
        assert passes.count("constant_folding") == 1
        assert "memory_optimizer" not in passes and "layout" not in passes
