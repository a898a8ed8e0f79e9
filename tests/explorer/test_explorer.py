"""The explorer in a real browser (Debian's Chromium through Playwright) against a real 4-node testnet.

Each test saves a screenshot of every page it looks at under its tmp_path (the failure message names it) and
checks the text a person would read, not only status codes."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys

import httpx
from playwright.sync_api import expect

from node.client import RadChainClient
from tests.explorer.conftest import ISSUER, OTHER_STUDY, PATIENT, STUDY


def url(net, i: int = 0) -> str:
    return net.nodes[i].rpc + "/explorer"


def shot(page, tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return str(path)


def login(page, net, i: int = 0, token: str | None = None) -> None:
    page.goto(url(net, i) + "/")
    page.fill("#token", token if token is not None else net.nodes[i].read_token)
    page.click("button[type=submit]")


def test_login_with_read_token_shows_consortium_of_four(explorer_net, page, tmp_path):
    net = explorer_net
    page.goto(url(net) + "/consortium")
    assert page.url.endswith("/explorer/login"), "an anonymous visitor is sent to the login form"
    shot(page, tmp_path, "login")
    login(page, net)
    assert page.url.endswith("/explorer/consortium")
    where = shot(page, tmp_path, "consortium")
    rows = page.locator("#members tbody tr")
    assert rows.count() == 4, where
    text = page.inner_text("#members")
    for name in ("hosp-a", "hosp-b", "hosp-c", "hosp-d"):
        assert name in text, where
    assert "this node" in page.inner_text("#members tbody tr:first-child"), where
    # every member answers its height and, the testnet being idle, nobody is behind (on a loaded machine a
    # peer may miss the 1.5 s budget of one refresh: the page's own refresh, not the test, tries again)
    top = max(h for _, h, _ in net.committed)
    for r in range(4):
        cells = rows.nth(r).locator("td")
        expect(cells.nth(3)).to_have_text("up to date", timeout=20_000)
        assert int(cells.nth(2).inner_text()) >= top, where
    # every member reports its view, mempool size and peers itself over the p2p status exchange (issue 16)
    for r in range(4):
        cells = rows.nth(r).locator("td")
        for col in (5, 6, 7):  # view, mempool, peers: numbers, not "n/a"
            expect(cells.nth(col)).to_have_text(re.compile(r"^\d+$"), timeout=20_000)
        expect(cells.nth(7)).to_have_text("3", timeout=20_000)  # each member is connected to the 3 others
        assert "UTC" in cells.nth(8).inner_text(), where  # its last block time
    where = shot(page, tmp_path, "consortium-reported")
    views = {int(rows.nth(r).locator("td").nth(5).inner_text()) for r in range(4)}
    assert len(views) == 1, (views, where)  # an idle testnet: all four in the same view
    assert "as reported by the member" in page.inner_text("main"), where
    assert page.locator('meta[http-equiv="refresh"]').count() == 1  # refreshes by itself
    assert "pseudonym" in page.inner_text("footer")


def test_block_and_tx_pages_say_receipt_valid(explorer_net, page, tmp_path):
    net = explorer_net
    tx_hash, height, member = net.committed[1]  # hosp-b's transfer
    login(page, net, 2, net.nodes[2].read_token)  # any member's explorer shows the whole chain
    page.click("nav >> text=Chain")
    where = shot(page, tmp_path, "chain")
    assert page.locator("#blocks tbody tr").count() >= 1, where
    page.click(f"#blocks >> a >> text=/^{height}$/")
    where = shot(page, tmp_path, "block")
    assert page.locator("h1").inner_text() == f"Block {height}", where
    assert "instances.transferred" in page.inner_text("#txs") and "hosp-b" in page.inner_text("#txs"), where
    page.click(f'#txs a[href$="{tx_hash}"]')
    where = shot(page, tmp_path, "tx")
    verdict = page.inner_text("#verdict")
    assert "receipt valid" in verdict and f"height {height}" in verdict, where
    fields = page.inner_text("#fields")
    assert "hosp-b" in fields and "pseudonym" in fields, where
    assert STUDY not in page.content() and PATIENT not in page.content()  # nobody typed them on this page

    # the chain page's search box finds the same tx by its hash, and says plainly what it cannot find
    page.click("nav >> text=Chain")
    page.fill("#q", tx_hash)
    page.click("form.search button")
    assert "receipt valid" in page.inner_text("#verdict")
    page.click("nav >> text=Chain")
    page.fill("#q", STUDY)
    page.click("form.search button")
    where = shot(page, tmp_path, "find-not-found")
    assert "Not found" in page.inner_text("h1") and "Study timeline" in page.inner_text("main"), where
    assert STUDY not in page.url


def test_study_timeline_across_two_hospitals(explorer_net, page, tmp_path):
    net = explorer_net
    login(page, net)
    page.click("nav >> text=Study timeline")
    page.fill("#uid", STUDY)
    page.click("form.card button")
    where = shot(page, tmp_path, "study")
    events = page.locator("#events tbody tr")
    assert events.count() == 4, where
    table = page.inner_text("#events")
    assert "hosp-a" in table and "hosp-b" in table, where
    kinds = [events.nth(r).locator("td").nth(2).inner_text() for r in range(4)]
    assert kinds == ["instances.stored", "instances.transferred", "instances.accessed", "export"], where
    body = page.inner_text("main")
    assert "2 hospital(s)" in body and STUDY in body and "pseudonym" in body, where
    assert PATIENT not in page.content(), "the patient ID was not typed here: it must not appear"
    assert page.url.endswith("/explorer/study"), "the UID travels in the POST body, never in the URL"

    # a study nobody recorded: said plainly; a malformed UID: said why
    page.fill("#uid", "1.2.3.4.5.6.7.8.9")
    page.click("form.card button")
    assert "No events recorded for this study" in page.inner_text("main")
    page.fill("#uid", "not a uid <script>")
    page.click("form.card button")
    where = shot(page, tmp_path, "study-odd")
    assert "not a well-formed DICOM UID" in page.inner_text("#note"), where
    assert "not a uid <script>" in page.inner_text("main")  # echoed as text, escaped, never as markup
    assert page.locator("main script").count() == 0


def test_patient_research_and_utilization_pages(explorer_net, page, tmp_path):
    net = explorer_net
    login(page, net, 1, net.nodes[1].read_token)
    page.click("nav >> text=Patient")
    page.fill("#patient_id", PATIENT)
    page.fill("#issuer", ISSUER)
    page.click("form.card button")
    where = shot(page, tmp_path, "patient")
    assert page.locator("#events tbody tr").count() == 6, where  # 4 of STUDY, 1 of OTHER_STUDY, the consent
    assert "consent.granted" in page.inner_text("#events"), where
    assert OTHER_STUDY not in page.content() and STUDY not in page.content(), "study UIDs were not typed here"

    page.click("nav >> text=Research")
    where = shot(page, tmp_path, "research")
    assert "not yet recorded" in page.inner_text("main"), where
    consents = page.inner_text("#consents")
    # the grantee is a pseudonym token on chain (issue 13): the page shows the token, never the name
    assert "consent.granted" in consents and "hosp-a" in consents and "study-lung-ai" not in consents, where
    assert PATIENT not in page.content()

    page.click("nav >> text=Utilization")
    where = shot(page, tmp_path, "utilization")
    assert page.locator("figure.chart svg rect[fill]").count() > 3, where
    totals = {r.locator("td").nth(0).inner_text(): int(r.locator("td").nth(1).inner_text())
              for r in page.locator("#totals tbody tr").all()}
    assert totals["hosp-a"] == 4 and totals["hosp-b"] == 2, (totals, where)


def test_receipt_check_accepts_genuine_and_rejects_tampered(explorer_net, page, tmp_path):
    net = explorer_net
    tx_hash, height, _ = net.committed[0]
    login(page, net, 3, net.nodes[3].read_token)
    page.goto(url(net, 3) + f"/tx/{tx_hash}")
    genuine = page.locator("#receipt").text_content()
    doc = json.loads(genuine)
    assert doc["hash"] == tx_hash

    page.click("nav >> text=Receipt check")
    page.fill("#receipt", genuine)
    page.click("form.card button")
    where = shot(page, tmp_path, "receipt-valid")
    assert "receipt valid" in page.inner_text("#verdict") and tx_hash in page.inner_text("#verdict"), where

    # One hex digit of the signed tx changed: the signature (or the Merkle path) no longer holds.
    tampered = dict(doc, tx=doc["tx"][:-6] + ("0" if doc["tx"][-6] != "0" else "1") + doc["tx"][-5:])
    page.fill("#receipt", json.dumps(tampered))
    page.click("form.card button")
    where = shot(page, tmp_path, "receipt-tampered")
    verdict = page.inner_text("#verdict")
    assert "receipt rejected" in verdict and "receipt valid" not in verdict, where

    # Uploaded as a file: a certificate claimed for another height is refused too.
    moved = dict(doc, height=height + 1)
    page.set_input_files("#file", files=[{"name": "r.json", "mimeType": "application/json",
                                          "buffer": json.dumps(moved).encode()}])
    page.click("form.card button")
    where = shot(page, tmp_path, "receipt-upload")
    assert "receipt rejected" in page.inner_text("#verdict") and "height" in page.inner_text("#verdict"), where

    for junk in ("{", "[1, 2]", json.dumps({"tx": "zz"}), "x" * 300_000):
        page.fill("#receipt", junk)
        page.click("form.card button")
        assert "receipt rejected" in page.inner_text("#verdict"), junk[:40]


def test_wrong_token_sees_nothing(explorer_net, page, tmp_path):
    net = explorer_net
    # a token of another node, a submit-only token of this node, and a made-up one
    for i, token in enumerate((net.nodes[1].read_token, net.submit_only, "not-a-token")):
        login(page, net, 0, token)
        where = shot(page, tmp_path, f"wrong-token-{i}")
        assert page.url.endswith("/explorer/login"), where
        assert "not accepted" in page.inner_text("#error"), where
        assert "hosp-b" not in page.inner_text("body"), where
        assert page.locator("nav").count() == 0, where
    for path in ("/consortium", "/chain", "/utilization", f"/tx/{net.committed[0][0]}", "/block/1"):
        page.goto(url(net) + path)
        assert page.url.endswith("/explorer/login"), path
    # the same with a forged cookie and with plain HTTP clients
    page.context.add_cookies([{"name": "radchain_explorer", "value": "eyJ0IjoieCIsImUiOjk5OTk5OTk5OTl9.00",
                               "url": net.nodes[0].rpc + "/explorer/"}])
    page.goto(url(net) + "/consortium")
    assert page.url.endswith("/explorer/login")
    r = httpx.get(url(net) + "/consortium", headers={"Authorization": "Bearer nope"}, follow_redirects=False)
    assert r.status_code == 303 and "hosp-" not in r.text
    r = httpx.get(url(net) + "/consortium", headers={"Authorization": f"Bearer {net.nodes[0].token}"})
    assert r.status_code == 200 and r.text.count("hosp-") >= 4  # the operator's token works without a form


def test_forms_refuse_foreign_origin(explorer_net):
    """CSRF: a page elsewhere cannot post the explorer's forms, logged in or not."""
    net = explorer_net
    node = net.nodes[0]
    base = url(net)
    form = {"token": node.read_token}
    own = node.rpc
    # no Origin and no Referer: refused by the explorer; a foreign Origin: refused at the edge
    assert httpx.post(base + "/login", data=form).status_code == 403
    assert httpx.post(base + "/login", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.post(base + "/login", data=form, headers={"Referer": "http://evil.example/x"}).status_code == 403
    # DNS rebinding: the attacker's name in Host and a matching Origin is still not this node
    rebound = httpx.post(base + "/login", data=form, headers={"Host": "evil.example",
                                                              "Origin": "http://evil.example"})
    assert rebound.status_code == 403 and "set-cookie" not in rebound.headers
    ok = httpx.post(base + "/login", data=form, headers={"Origin": own})
    assert ok.status_code == 303 and "radchain_explorer" in ok.headers["set-cookie"]
    cookie = ok.cookies["radchain_explorer"]
    assert "samesite=strict" in ok.headers["set-cookie"].lower() and "httponly" in ok.headers["set-cookie"].lower()
    # the cookie holds the token's hash, not the token: a copied cookie is no bearer token for the JSON-RPC
    import base64
    assert form["token"] not in base64.urlsafe_b64decode(cookie.split(".")[0] + "==").decode()
    assert httpx.post(own + "/", json={"jsonrpc": "2.0", "id": 1, "method": "status"},
                      headers={"Authorization": f"Bearer {cookie}"}).json()["error"]["code"] == -32001
    with httpx.Client(cookies={"radchain_explorer": cookie}) as c:
        assert c.get(base + "/consortium").status_code == 200
        study = {"uid": STUDY}
        assert c.post(base + "/study", data=study, headers={"Origin": "http://evil.example"}).status_code == 403
        r = c.post(base + "/study", data=study)
        assert r.status_code == 403 and "hosp-b" not in r.text
        r = c.post(base + "/study", data=study, headers={"Origin": own})
        assert r.status_code == 200 and "hosp-b" in r.text
        # the same-origin exception is the explorer's only: JSON-RPC still refuses a browser Origin
        rpc = c.post(own + "/", json={"jsonrpc": "2.0", "id": 1, "method": "status"},
                     headers={"Origin": own, "Authorization": f"Bearer {node.read_token}"})
        assert rpc.status_code == 403
        # hostile bodies: too large, too many fields, an unknown encoding
        big = c.post(base + "/receipt", content=b"a=" + b"x" * (2 << 20), headers={
            "Origin": own, "Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code in (400, 413)
        many = c.post(base + "/study", content="&".join(f"f{i}=1" for i in range(50)), headers={
            "Origin": own, "Content-Type": "application/x-www-form-urlencoded"})
        assert many.status_code == 400
        long_uid = c.post(base + "/study", data={"uid": "1." * 200}, headers={"Origin": own})
        assert long_uid.status_code == 400 and "at most 256 characters" in long_uid.text  # past the maxlength
        odd = c.post(base + "/study", content=b"uid=1.2", headers={"Origin": own, "Content-Type": "text/plain"})
        assert odd.status_code == 400
        assert c.get(base + "/tx/" + "g" * 64).status_code == 404
        assert re.search(r"Content-Security-Policy", str(c.get(base + "/chain").headers), re.I)


def test_revoked_token_ends_the_session(explorer_net, page, tmp_path):
    net = explorer_net
    home = str(net.nodes[0].home)

    def radchain(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "node.cli", "token", *args, "--home", home],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = radchain("add", "--name", "auditor", "--roles", "read")
    token = out.strip().splitlines()[0]  # printed once, on stdout
    login(page, net, 0, token)
    assert page.url.endswith("/explorer/consortium") and "auditor" in page.inner_text("header")
    radchain("revoke", "--name", "auditor")
    page.goto(url(net) + "/chain")
    where = shot(page, tmp_path, "after-revoke")
    assert page.url.endswith("/explorer/login") and page.locator("#blocks").count() == 0, where


def test_hostile_forms_and_cookies_get_an_answer_never_a_crash(explorer_net):
    """Whatever a logged-in browser (or anything holding a session) posts, the explorer answers it with a
    page, and the node goes on serving."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    net = explorer_net
    node = net.nodes[0]
    own, base = node.rpc, url(net)
    cookie = httpx.post(base + "/login", data={"token": node.read_token}, headers={"Origin": own}).cookies[
        "radchain_explorer"]
    client = httpx.Client(cookies={"radchain_explorer": cookie}, timeout=10)
    kinds = st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                             "multipart/form-data", "multipart/form-data; boundary=" + "b" * 300, "text/plain"])

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/receipt", "/study", "/patient", "/login"]), body=st.binary(max_size=2000),
           kind=kinds)
    def post_anything(path, body, kind):
        r = client.post(base + path, content=body, headers={"Origin": own, "Content-Type": kind})
        assert r.status_code in (200, 400, 401, 413), (path, kind, body[:80], r.status_code)
        assert "<html" in r.text and "Traceback" not in r.text

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=";,\"\\"),
                         max_size=300))
    def forged_cookie(value):
        r = httpx.get(base + "/consortium", cookies={"radchain_explorer": value}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("/explorer/login")

    try:
        post_anything()
        forged_cookie()
        # multipart with a receipt file among junk parts, the way a browser sends it
        boundary = "----x"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n{i}\r\n' for i in range(3)]
        receipt = client.get(base + f"/tx/{net.committed[2][0]}").text
        doc = json.loads(html.unescape(re.search(r'<pre id="receipt">(.*?)</pre>', receipt, re.S).group(1)))
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="r.json"\r\n'
                     f'Content-Type: application/json\r\n\r\n{json.dumps(doc)}\r\n--{boundary}--\r\n')
        r = client.post(base + "/receipt", content="".join(parts).encode(),
                        headers={"Origin": own, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 200 and "receipt valid" in r.text, r.text[-2000:]
        assert net.rpc(0, "status")["height"] >= net.committed[-1][1]  # still serving
    finally:
        client.close()


def test_a_member_that_stops_is_shown_then_recovers_by_itself(explorer_net, page, tmp_path):
    """The consortium page names a member that does not answer, and, refreshing itself (no reload by the
    test), shows it up to date again once it is back."""
    net = explorer_net
    login(page, net)
    last = page.locator("#members tbody tr").nth(3)
    net.kill(3)
    try:
        expect(last.locator("td").nth(2)).to_have_text("no answer", timeout=30_000)
        where = shot(page, tmp_path, "member-down")
        assert last.locator("td").nth(3).inner_text() == "unknown", where
    finally:
        net.start(3)
    net.wait_ready([3], timeout=60)
    expect(last.locator("td").nth(3)).to_have_text("up to date", timeout=40_000)
    shot(page, tmp_path, "member-back")


def test_a_tx_signed_in_a_batch_shows_its_batch_and_its_receipt_is_valid(explorer_net, page, tmp_path):
    """Events submitted in one JSON-RPC batch share one signature (node.ledger.tx); the tx page says so,
    shows the proof, and its receipt still verifies on its own."""
    net = explorer_net
    events = [{"type": "instances.accessed", "patient_id": "P-BATCH", "issuer": ISSUER, "actor": "dr.batch",
               "purpose": "TREAT", "study_uid": f"1.2.840.99.{900 + i}"} for i in range(3)]
    with RadChainClient(net.nodes[0].rpc, net.nodes[0].token) as rc:
        answers = rc.batch([("submit_event", {"event": ev, "mode": "commit", "timeout": 30}) for ev in events])
    assert all(a["status"] == "committed" for a in answers), answers
    h = answers[1]["hash"]
    net.wait_until(lambda: net.height(2) >= answers[1]["height"], 30, "node 2 has the block")
    login(page, net, 2, net.nodes[2].read_token)
    page.goto(url(net, 2) + f"/tx/{h}")
    where = shot(page, tmp_path, "tx-batch")
    assert "receipt valid" in page.inner_text("#verdict"), where
    fields = page.inner_text("#fields")
    assert "of a batch of 3 signed together; this tx is number 2" in fields and "batch proof" in fields, where
