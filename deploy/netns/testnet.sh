#!/usr/bin/env bash
# Run a local testnet with every node in its own network namespace and IP (real multi-host behaviour
# on one machine).   usage: testnet.sh N DIR [PREFIX] [SUBNET]    e.g. testnet.sh 4 /tmp/nsnet
# Ctrl-C stops the nodes and removes the namespaces. Reach node i's RPC from its namespace:
#   ip netns exec PREFIX-i curl -s http://SUBNET.i:26601 -H "Authorization: Bearer $TOKEN" \
#     -d '{"jsonrpc":"2.0","id":1,"method":"status"}'      (tokens: DIR/testnet.json, token or read_token)
# (node i listens on port 26600+2(i-1) for p2p and 26601+2(i-1) for RPC). Cut a link: link.sh PREFIX i down
set -euo pipefail
N=${1:?usage: testnet.sh N DIR [PREFIX] [SUBNET]}
DIR=${2:?usage: testnet.sh N DIR [PREFIX] [SUBNET]}
PREFIX=${3:-rcnet}
SUBNET=${4:-10.77.0}
HERE=$(cd "$(dirname "$0")" && pwd)
RADCHAIN=${RADCHAIN:-$HERE/../../.venv/bin/radchain}
hosts=$(seq -s, -f "$SUBNET.%g" 1 "$N")
"$RADCHAIN" testnet --nodes "$N" --out "$DIR" --hosts "$hosts"
bash "$HERE/up.sh" "$N" "$PREFIX" "$SUBNET" >/dev/null
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait || true; bash "$HERE/down.sh" "$PREFIX"; }
trap cleanup EXIT INT TERM
i=1
for home in $(python3 -c "import json,sys; [print(n['home']) for n in json.load(open(sys.argv[1]))['nodes']]" "$DIR/testnet.json"); do
  ip netns exec "$PREFIX-$i" "$RADCHAIN" start --home "$home" >>"$home/node.log" 2>&1 &
  pids+=($!)
  echo "node $i in namespace $PREFIX-$i at $SUBNET.$i (log $home/node.log)"
  i=$((i + 1))
done
wait
