"""The ledger: txs, events intake, pseudonyms, blocks, Merkle proofs, state, chain, store, verification.

Deterministic and free of the runtime: it imports no node.runtime and no edge (checked by `make lint`)."""
