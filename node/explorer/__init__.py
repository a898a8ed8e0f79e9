"""Web explorer served by every node under /explorer (docs/EXPLORER.md): Jinja2 templates and one CSS file,
no JavaScript. ``explorer_mount(rpc)`` is what the node gives the RPC server to include it."""

from __future__ import annotations

from starlette.routing import Mount

from node.rpc.server import EXPLORER_PREFIX as PREFIX


def explorer_mount(rpc) -> Mount:
    from node.explorer.app import Explorer  # jinja2 and the templates load only when a server is built

    return Mount(PREFIX, app=Explorer(rpc).app)
