import subprocess
import sys

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
    import os

    from tfnas.runtime import inter_op_threads
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert inter_op_threads() == 2                            # long-lived iterators: fastest
    assert inter_op_threads(iterators_per_epoch=True) >= 8    # the deadlock work-around
    assert inter_op_threads(3) == 3                           # an explicit request wins
    assert inter_op_threads(3, iterators_per_epoch=True) == 3
