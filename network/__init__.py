"""py-libp2p transport for the consortium: identities, allow-list, framing, gossip, peer streams. Never imports node/."""
