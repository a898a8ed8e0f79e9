"""py-libp2p transport for the consortium: identities, allow-list, framing, peer streams. Never imports node/."""

from .identity import (
    load_or_create_identity,
    peer_id_from_public_key,
    peer_id_of,
    public_key_of_peer_id,
)
from .peer_network import PeerNetwork, RequestError, RequestTimeout

__all__ = [
    "PeerNetwork",
    "RequestError",
    "RequestTimeout",
    "load_or_create_identity",
    "peer_id_from_public_key",
    "peer_id_of",
    "public_key_of_peer_id",
]
