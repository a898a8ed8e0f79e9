"""FHIR R4 facade of the ledger (docs/INTEROP.md): every applied tx as an IHE BALP-shaped AuditEvent,
searchable with the IHE ITI-81 parameters. ``fhir_mount(rpc)`` is what the node gives the RPC server to include it."""

from __future__ import annotations

from starlette.routing import Mount

PREFIX = "/fhir"


def fhir_mount(rpc) -> Mount:
    from node.fhir.app import FhirApp

    return Mount(PREFIX, app=FhirApp(rpc).app)
