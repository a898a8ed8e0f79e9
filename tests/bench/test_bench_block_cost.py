"""bench.throughput.block_cost: the per-tx and per-block CPU a node spends, fitted to the max and half steps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.throughput import block_cost


def step(tx_per_s: float, blocks_per_s: float, us_per_tx: float, ms_per_block: float, seconds: float = 20.0) -> dict:
    cores = us_per_tx * 1e-6 * tx_per_s + ms_per_block * 1e-3 * blocks_per_s
    return {"tx_per_s": tx_per_s, "blocks": blocks_per_s * seconds, "window_s": seconds, "cores": [cores] * 4}


@given(us_per_tx=st.floats(10, 500), ms_per_block=st.floats(0.1, 20), half_blocks=st.floats(20, 120))
def test_the_fit_recovers_the_costs_that_made_the_two_steps(us_per_tx, ms_per_block, half_blocks):
    top = step(3800, 8, us_per_tx, ms_per_block, seconds=55)
    half = step(1900, half_blocks, us_per_tx, ms_per_block)
    per_tx, per_block = block_cost(top, half)
    assert per_tx == pytest.approx(us_per_tx, rel=1e-6)
    assert per_block == pytest.approx(ms_per_block, rel=1e-6)


def test_steps_with_the_same_txs_per_block_cannot_tell_txs_from_blocks():
    assert block_cost(step(3800, 8, 100, 3), step(1900, 4, 100, 3)) is None
