"""Reports and interop exports read from a node: ATNA syslog forwarding, utilization charts."""
