"""Research sharing with consent (issue 14), the edge part: projects read and written over RPC,
de-identification with lineage, export manifests and their offline check, the patient access report.
The rules every validator applies live in the ledger (node.ledger.research, called from node.ledger.state);
the codes (scopes, research purposes, project codes) in node.vocabulary."""
