"""Sans-I/O PBFT: a deterministic state machine that turns events into actions. Never imports node/."""
