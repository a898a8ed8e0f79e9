"""The consensus simulator (python -m consensus.simulator) and its mutation check (python -m consensus.sim.mutants)."""
