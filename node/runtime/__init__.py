"""The running node: `node.runtime.Node` owns the consensus driver, mempool, gossip, sync, WAL."""
