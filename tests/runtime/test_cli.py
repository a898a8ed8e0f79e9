"""The operator's path for a real consortium, through the `radchain` command line only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from node.testnet import free_base_port

pytestmark = pytest.mark.timeout(180)


def radchain(*args, check=True, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], capture_output=True, text=True,
                          check=check, cwd=cwd, timeout=60)


def test_init_genesis_start_submit_query_and_graceful_stop(tmp_path):
    radchain("secrets", "--out", tmp_path / "secrets.json")
    base = free_base_port(8)
    homes = []
    for i, name in enumerate(["north", "south", "east", "west"]):
        home = tmp_path / name
        radchain("init", "--home", home, "--name", name, "--p2p", f"/ip4/127.0.0.1/tcp/{base + 2 * i}",
                 "--rpc", f"127.0.0.1:{base + 2 * i + 1}", "--secrets", tmp_path / "secrets.json")
        entry = json.loads((home / "member.json").read_text())
        assert entry["name"] == name and len(bytes.fromhex(entry["pubkey"])) == 32
        homes.append(home)
    radchain("genesis", "--chain-id", "regional-1", *[h / "member.json" for h in homes], "--out", tmp_path / "g.json")
    for h in homes:
        (h / "genesis.json").write_text((tmp_path / "g.json").read_text())
    # The pseudonym key: a dealer's shares, each member installs its own (docs/PSEUDONYMS.md, "Key setup").
    radchain("pseudonym", "deal", "--members", "4", "--epoch", "1", "--genesis", tmp_path / "g.json",
             "--out", tmp_path / "shares")
    for h in homes:
        radchain("pseudonym", "install", "--home", h, "--public", tmp_path / "shares" / "epoch-1.public",
                 "--share", tmp_path / "shares" / f"{h.name}.share")

    procs = [subprocess.Popen([sys.executable, "-m", "node.cli", "start", "--home", str(h)],
                              stdout=subprocess.DEVNULL, stderr=open(h / "node.log", "w")) for h in homes]
    try:
        deadline = time.monotonic() + 60
        while True:
            r = radchain("query", "--home", homes[3], check=False)
            if r.returncode == 0 and json.loads(r.stdout)["peers"] == 3:
                break
            assert time.monotonic() < deadline, "nodes did not connect"
            time.sleep(0.3)
        out = radchain("submit", "--home", homes[0], "--type", "instances.stored", "--patient-id", "P-77",
                       "--issuer", "NORTH", "--study-uid", "1.2.3.4", "--actor", "pacs", "--purpose", "TREAT",
                       "--wait")
        answer = json.loads(out.stdout)
        assert answer["status"] == "committed", answer
        # committed on north's node; east's may apply that block a moment later
        deadline = time.monotonic() + 30
        while json.loads(radchain("query", "--home", homes[2]).stdout)["height"] < answer["height"]:
            assert time.monotonic() < deadline, f"east never reached height {answer['height']}"
            time.sleep(0.3)
        seen = json.loads(radchain("query", "--home", homes[2], "--tx", answer["tx"]).stdout)
        assert seen["status"] == "committed" and seen["height"] == answer["height"]
        assert seen["tx"]["type"] == "instances.stored" and seen["tx"]["member"] == "north"
        assert "P-77" not in json.dumps(seen)  # the patient travels as a token only

        bad = radchain("submit", "--home", homes[0], "--type", "instances.viewed", check=False)
        assert bad.returncode == 1 and "unknown event type" in bad.stderr
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    assert codes == [0, 0, 0, 0], "SIGTERM must stop a node cleanly"
    for h in homes:
        assert radchain("verify-chain", "--home", h, "--quiet", check=False).returncode == 0


def test_a_command_for_a_node_that_is_down_says_so_without_a_traceback(tmp_path):
    home = tmp_path / "n"
    port = free_base_port(2)
    radchain("init", "--home", home, "--name", "n", "--p2p", f"/ip4/127.0.0.1/tcp/{port}",
             "--rpc", f"127.0.0.1:{port + 1}")
    for args in (["query"], ["submit", "--type", "instances.stored", "--patient-id", "P-1", "--issuer", "X",
                             "--study-uid", "1.2.3", "--actor", "pacs", "--purpose", "TREAT"]):
        r = radchain(*args, "--home", home, check=False)
        assert r.returncode == 1, r
        assert f"radchain {args[0]}: cannot reach the node at http://127.0.0.1:{port + 1}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_start_refuses_a_broken_config_with_a_clear_message(tmp_path):
    home = tmp_path / "n"
    radchain("init", "--home", home, "--name", "n", "--p2p", "/ip4/127.0.0.1/tcp/1")
    cfg = (home / "config.toml").read_text().replace('[rpc]', '[rpc]\nbogus = 1')
    (home / "config.toml").write_text(cfg)
    r = radchain("start", "--home", home, check=False)
    assert r.returncode == 2 and "unknown key rpc.bogus" in r.stderr


@pytest.mark.parametrize("dicom, expected", [
    ('atna_tls = "127.0.0.1:6514"\natna_cert = "c.pem"\natna_key = "k.pem"', "atna_client_ca"),
    ('atna_tls = "127.0.0.1:6514"\natna_cert = "c.pem"\natna_key = "k.pem"\natna_client_ca = "ca.pem"',
     "unusable"),
    ('atna_allow = "everyone"', "atna_allow"),
    ('atna_tcp = "not-an-address"', "atna_tcp"),
])
def test_start_refuses_a_bad_dicom_setting_with_a_clear_message(tmp_path, dicom, expected):
    home = tmp_path / "n"
    radchain("init", "--home", home, "--name", "n", "--p2p", "/ip4/127.0.0.1/tcp/1")
    with open(home / "config.toml", "a") as fh:
        fh.write(f"\n[dicom]\n{dicom}\n")
    r = radchain("start", "--home", home, check=False)
    assert r.returncode == 2 and "radchain start: [dicom]" in r.stderr and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_init_under_umask_000_writes_private_files_and_start_refuses_open_secrets(tmp_path):
    import os
    import stat

    home = tmp_path / "site" / "node"
    init = subprocess.run([sys.executable, "-m", "node.cli", "init", "--home", str(home), "--name", "n",
                           "--p2p", "/ip4/127.0.0.1/tcp/1"], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: os.umask(0))
    assert init.returncode == 0, init.stderr

    def mode(p) -> int:
        return stat.S_IMODE(os.stat(p).st_mode)

    for d in (home, home / "keys"):
        assert mode(d) == 0o700, d
    for f in ("config.toml", "tokens.json", "member.json", "keys/member.key", "keys/p2p.key", "keys/operator.token"):
        assert mode(home / f) == 0o600, f
    token = (home / "keys" / "operator.token").read_text().strip()
    assert token not in (home / "tokens.json").read_text() + (home / "config.toml").read_text()
    assert "admin" in radchain("token", "list", "--home", home).stdout

    for secret in ("keys/member.key", "config.toml"):
        os.chmod(home / secret, 0o644)
        r = radchain("start", "--home", home, check=False)
        assert r.returncode == 2, r.stderr
        assert str(home / secret) in r.stderr and f"chmod 600 {home / secret}" in r.stderr, r.stderr
        os.chmod(home / secret, 0o600)

    # a config from before hashed tokens: refused with the way out
    cfg = (home / "config.toml").read_text().replace("[rpc]", '[rpc]\ntokens = { pacs = "pacs-token-0123456789" }')
    (home / "config.toml").write_text(cfg)
    r = radchain("start", "--home", home, check=False)
    assert r.returncode == 2 and "radchain token add" in r.stderr and "pacs-token" not in r.stderr


def test_testnet_manifest_holding_every_token_is_0600(tmp_path):
    import os
    import stat

    out = tmp_path / "tn"
    radchain("testnet", "--nodes", "4", "--out", out, "--base-port", free_base_port(8))
    assert stat.S_IMODE(os.stat(out / "testnet.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    nodes = json.loads((out / "testnet.json").read_text())["nodes"]
    roles = radchain("token", "list", "--home", nodes[0]["home"]).stdout
    assert "operator\tadmin\t" in roles and "reader\tread\t" in roles
