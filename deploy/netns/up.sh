#!/usr/bin/env bash
# Put N RadChain nodes in their own network namespaces on one private switch.
#   usage: up.sh N PREFIX [SUBNET]        e.g. up.sh 4 rc      (SUBNET defaults to 10.77.0)
# Creates namespace PREFIX-sw holding a bridge, and namespaces PREFIX-1..PREFIX-N, each with
# eth0 = SUBNET.<i>/24 wired by a veth pair to the bridge (switch side: port<i>). The bridge and all
# 10.x addresses live only inside these namespaces: nothing is added to the host's own network, so
# traffic never leaves them. Run a node with:  ip netns exec PREFIX-1 <command>
# Cut / heal one node's link: link.sh PREFIX i down|up.   Remove everything: down.sh PREFIX
set -euo pipefail
N=${1:?usage: up.sh N PREFIX [SUBNET]}
PREFIX=${2:?usage: up.sh N PREFIX [SUBNET]}
SUBNET=${3:-10.77.0}
[[ $N =~ ^[0-9]+$ && $N -ge 1 && $N -le 250 ]] || { echo "N must be 1..250" >&2; exit 2; }
[[ $PREFIX =~ ^[a-zA-Z0-9]{1,8}$ ]] || { echo "PREFIX must be 1-8 alphanumerics" >&2; exit 2; }
[[ $SUBNET =~ ^10\.[0-9]+\.[0-9]+$ ]] || { echo "SUBNET must look like 10.X.Y" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (ip netns)" >&2; exit 1; }

SW="$PREFIX-sw"
ip netns add "$SW"
ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
for i in $(seq 1 "$N"); do
  NS="$PREFIX-$i"
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  # create the pair inside the switch namespace, then move one end into the node's namespace
  ip -n "$SW" link add "port$i" type veth peer name eth0 netns "$NS"
  ip -n "$SW" link set "port$i" master br0 up
  ip -n "$NS" addr add "$SUBNET.$i/24" dev eth0
  ip -n "$NS" link set eth0 up
  echo "$NS $SUBNET.$i"
done
