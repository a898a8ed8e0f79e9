"""The running node: `node.runtime.node.Node` owns the consensus driver, mempool, gossip, sync, WAL."""
