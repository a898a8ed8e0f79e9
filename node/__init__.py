"""RadChain's blockchain application: transactions, blocks, store, runtime, RPC, CLI and DICOM hook."""
