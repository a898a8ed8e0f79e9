"""bench.consortium's WAN scheduler drives the real replicas to agreement (so `make bench` cannot print a
table of a simulation that stalled or disagreed), and its counts are those of PBFT's all-to-all votes."""

from __future__ import annotations

from bench.consortium import WanConsortium
from consensus import messages as m


def test_the_simulated_consortium_agrees_and_counts_quadratic_votes():
    sims = {}
    for n in (4, 7):
        sim = WanConsortium(n, block_txs=100)
        sim.run(blocks=5)
        assert min(sim.heights) >= 5
        # every member holds the same chain of state digests (agreement on the committed digests)
        assert len({tuple(s[1:6]) for s in sim.states}) == 1
        sims[n] = sim
    for n, sim in sims.items():
        done = min(sim.heights)
        prepares = sim.sent[m.PREPARE] / done
        # each backup sends its PREPARE to every other member: (n - 1)^2 per block, plus the retransmissions
        # of whatever is in flight at a tick (the simulated time follows measured CPU, so it varies)
        assert 0.8 * (n - 1) ** 2 <= prepares <= 3 * (n - 1) ** 2, (n, prepares)
        assert sim.cpu[0] > 0 and sim.payload_bytes[0] > 0
    assert sims[7].sent[m.COMMIT] / min(sims[7].heights) > 2 * sims[4].sent[m.COMMIT] / min(sims[4].heights)
