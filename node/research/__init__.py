"""Research sharing with consent (issue 14): codes, projects and the export gate (validated by every node in
node.state), de-identification with lineage, export manifests and their offline check, the patient access
report. The ledger rules live in node/state.py and call into node.research.rules."""
