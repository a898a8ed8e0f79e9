#!/usr/bin/env bash
# Cut or heal node i's link at the switch, like pulling its cable: link.sh PREFIX i down|up
# The node keeps its own interface and address; packets to and from it are silently lost, so
# peers only notice through their heartbeat (no RST), as with a crashed machine or a dead switch port.
set -euo pipefail
PREFIX=${1:?usage: link.sh PREFIX i down|up}
I=${2:?usage: link.sh PREFIX i down|up}
STATE=${3:?usage: link.sh PREFIX i down|up}
[[ $STATE == up || $STATE == down ]] || { echo "state must be up or down" >&2; exit 2; }
ip -n "$PREFIX-sw" link set "port$I" "$STATE"
