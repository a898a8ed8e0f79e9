"""One real 4-node testnet for the explorer tests, with events from two hospitals in it, and one headless
Debian Chromium driven by Playwright (browsers cannot be downloaded here: never `playwright install`)."""

from __future__ import annotations

import pytest

from node.rpc.auth import SUBMIT, add_token
from node.testnet import LocalTestnet

STUDY = "1.2.840.113619.2.55.3.4271045733.996.1449464144.595"  # the study both hospitals touched
OTHER_STUDY = "1.2.840.113619.2.55.3.999"  # another study of the same patient (hosp-a only)
PATIENT, ISSUER = "PAT-0042", "HOSP-A"
SUBMIT_ONLY = "explorer-submit-only-0123456789"  # a real token on node 0, without the read role


def _event(kind: str, study: str | None, actor: str, **extra) -> dict:
    ev = {"type": kind, "patient_id": PATIENT, "issuer": ISSUER, "actor": actor, "purpose": "TREAT", **extra}
    if study is not None:
        ev["study_uid"] = study
    return ev


@pytest.fixture(scope="session")
def explorer_net(tmp_path_factory):
    """Nodes 0-3 up and connected; hosp-a (node 0) and hosp-b (node 1) recorded events of STUDY, hosp-a one
    of OTHER_STUDY and a consent. `net.committed` lists (hash, height, member) of every event."""
    net = LocalTestnet(tmp_path_factory.mktemp("explorernet"), 4)
    add_token(net.nodes[0].home / "tokens.json", "hook", [SUBMIT], SUBMIT_ONLY)
    net.start()
    try:
        net.wait_until(lambda: all(net.rpc(i, "status", timeout=2)["peers"] >= 3 for i in range(4)),
                       120, "all four nodes up and connected")
        plan = [
            (0, _event("instances.stored", STUDY, "modality.ct1", actor_ae="CT_ROOM_1")),
            (1, _event("instances.transferred", STUDY, "pacs.b", actor_ae="PACS_B")),
            (1, _event("instances.accessed", STUDY, "dr.jones")),
            (0, _event("export", STUDY, "dr.smith")),
            (0, _event("instances.accessed", OTHER_STUDY, "dr.smith")),
            (0, {"type": "consent.granted", "patient_id": PATIENT, "issuer": ISSUER, "grantee": "study-lung-ai",
                 "scope": "IMG-CT", "purpose": "HRESCH"}),
        ]
        net.committed = []
        for i, ev in plan:
            answer = net.rpc(i, "submit_event", {"event": ev, "mode": "commit", "timeout": 30}, timeout=40)
            assert answer["status"] == "committed", answer
            net.committed.append((answer["hash"], answer["height"], net.nodes[i].name))
        top = max(h for _, h, _ in net.committed)
        net.wait_until(lambda: all(net.height(i) >= top for i in range(4)), 60, "every node has every event")
        net.submit_only = SUBMIT_ONLY
        yield net
    finally:
        net.stop_all()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) per test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()
