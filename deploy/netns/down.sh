#!/usr/bin/env bash
# Remove the namespaces made by up.sh: down.sh PREFIX   (veths and the bridge go with them)
set -uo pipefail
PREFIX=${1:?usage: down.sh PREFIX}
[[ $PREFIX =~ ^[a-zA-Z0-9]{1,8}$ ]] || { echo "PREFIX must be 1-8 alphanumerics" >&2; exit 2; }
for ns in $(ip netns list | awk '{print $1}' | grep -E "^$PREFIX-(sw|[0-9]+)$"); do
  # processes still running inside would keep the namespace's sockets alive: stop them first
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$ns"
done
