"""Entry point of the deterministic adversarial simulator (the code lives in consensus/sim/).

    python -m consensus.simulator --seeds 10000 --nodes 4      # search
    python -m consensus.simulator --seed 1234 --nodes 4        # replay one schedule (verbose)
"""

from __future__ import annotations

import sys

from .sim.core import SimApp, Simulation, Violation, describe, main, run_seed

__all__ = ["SimApp", "Simulation", "Violation", "describe", "main", "run_seed"]

if __name__ == "__main__":
    sys.exit(main())
