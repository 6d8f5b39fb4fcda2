"""What a run shows and checks while it trains (``training/records.py``)."""

import numpy as np
import pytest

from lightnets_jax.training import records


def test_the_rate_counts_from_the_first_step_shown_so_a_compile_is_not_read_as_a_slow_machine(monkeypatch):
    clock = iter([100.0, 130.0, 132.0])  # step 0 finishes after a 30 s compile; then 1 s a step
    monkeypatch.setattr(records.time, "perf_counter", lambda: next(clock))
    rate = records.EpochRate(batch_size=64)
    assert rate.postfix(0, 2.5) == {"loss": "2.5000"}
    assert rate.postfix(30, 2.0) == {"loss": "2.0000", "img_s": "64.0"}  # 30 steps of 64 in 30 s
    assert rate.postfix(32, 1.5)["img_s"] == f"{32 * 64 / 32:.1f}"


def test_the_first_non_finite_loss_is_named_by_its_step_in_the_run(tmp_path):
    np.testing.assert_array_equal(records.checked_losses([1.0, 0.5], 0, 10, tmp_path), [1.0, 0.5])
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 13 \(epoch 2\)"):
        records.checked_losses([1.0, np.nan, np.inf], 1, 10, tmp_path, first_step=2)
