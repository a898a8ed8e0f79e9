"""JSON-RPC 2.0 over HTTP for operators and integrators (POST /), served inside the node's trio nursery."""
