"""Local testnets: write N node homes with one shared genesis, and run them as separate processes.

Each node gets two RPC tokens, stored hashed in its HOME/tokens.json: ``operator`` (admin: read, submit and
operator methods; also in HOME/keys/operator.token for local tools and the DICOM hook) and ``reader``
(read only). Both are listed in OUT/testnet.json, which is therefore written 0600."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import httpx

from network.identity import load_or_create_identity, peer_id_of
from node.ledger import oprf
from node.ledger.genesis import NEW_CHAIN_PARAMS, Genesis, Member
from node.privatefiles import make_private_dir, write_secret
from node.rpc.auth import ADMIN, READ, add_token
from node.runtime.keys import create_member_key
from node.runtime.settings import write_config
from node.runtime.tokenizer import ensure_local_secrets, load_epochs, oprf_threshold, write_epoch

HOSPITALS = ["hosp-a", "hosp-b", "hosp-c", "hosp-d", "hosp-e", "hosp-f", "hosp-g", "hosp-h", "hosp-i", "hosp-j"]
# Ports handed out by free_ports/free_base_port in this process, oldest first, so two callers never get the
# same one; past half the range the oldest half is forgotten (long since bound or released), so at least the
# last quarter of the range (3,000 ports) is never handed out again.
_ISSUED_PORTS: dict[int, None] = {}
_TEST_PORT_LOW, _TEST_PORT_HIGH = 20000, 32000  # below Linux's ephemeral range (32768-60999)
_PORT_RNG = random.Random()


def _issue(ports) -> None:
    _ISSUED_PORTS.update(dict.fromkeys(ports))
    if len(_ISSUED_PORTS) > (_TEST_PORT_HIGH - _TEST_PORT_LOW) // 2:
        for port in list(_ISSUED_PORTS)[:len(_ISSUED_PORTS) // 2]:
            del _ISSUED_PORTS[port]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct TCP ports on `host` that were free a moment ago, for tests and benchmarks that start their
    own servers. They are drawn below the ephemeral range: a port from bind(0) is an ephemeral one, which any
    outgoing connection (even a dial to that very port before its server listens: TCP self-connect) may take
    between check and bind (a CI run lost a test to "127.0.0.1:60155 is already in use")."""
    ports: list[int] = []
    for _ in range(200 * n):
        if len(ports) == n:
            break
        port = _PORT_RNG.randrange(_TEST_PORT_LOW, _TEST_PORT_HIGH)
        if port in _ISSUED_PORTS or port in ports or not _bindable(host, port):
            continue
        ports.append(port)
    if len(ports) == n:
        _issue(ports)
        return ports
    raise RuntimeError(f"no {n} free ports in {_TEST_PORT_LOW}-{_TEST_PORT_HIGH}")


def free_port() -> int:
    return free_ports(1)[0]


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class NodeInfo:
    name: str
    home: Path
    rpc: str
    p2p: str
    token: str  # operator: admin (read, submit and operator methods)
    read_token: str | None = None  # read only


def member_name(i: int) -> str:
    return HOSPITALS[i] if i < len(HOSPITALS) else f"hosp-{i}"


def generate(n: int, out: Path, *, base_port: int = 26600, host: str = "127.0.0.1",
             chain_id: str = "radchain-testnet", hosts: list[str] | None = None,
             params: dict | None = None, config_extra: dict | None = None) -> list[NodeInfo]:
    """Create `out/<name>/` homes, a shared genesis and `out/testnet.json`. Node i listens on
    base_port+2i (p2p) and base_port+2i+1 (RPC), on hosts[i] when given (one IP per namespace)."""
    if n < 4:
        raise ValueError("a BFT testnet needs at least 4 nodes (n = 3f+1 with f >= 1)")
    make_private_dir(out, tighten=False)  # created 0700; an existing directory (even ".") is left alone
    psk = os.urandom(32)
    # The consortium OPRF key: a trusted dealer is acceptable for a testnet (docs/PSEUDONYMS.md, "Key setup").
    # Each home receives its own share only; the dealer's key is dropped when this function returns.
    # With genesis param `oprf_dkg_epoch` the members generate it themselves on chain instead (dealer-free,
    # node.runtime.oprf_resharing): no home gets a share from here.
    dkg = bool((params or {}).get("oprf_dkg_epoch"))
    public, shares = oprf.deal(oprf_threshold(n), n, epoch=1)
    nodes, members = [], []
    for i in range(n):
        name = member_name(i)
        home = (out / name).resolve()
        ip = hosts[i] if hosts else host
        p2p = f"/ip4/{ip}/tcp/{base_port + 2 * i}"
        rpc_listen = f"{ip}:{base_port + 2 * i + 1}"
        key = create_member_key(home / "keys" / "member.key")
        identity = load_or_create_identity(home / "keys" / "p2p.key")
        write_config(home, name=name, p2p_listen=p2p, rpc_listen=rpc_listen, psk=psk,
                     extra=config_extra)
        if not dkg:
            write_epoch(home, public, shares[i])
        ensure_local_secrets(home)
        token = add_operator_token(home)
        read_token = add_token(home / "tokens.json", "reader", [READ])
        members.append(Member(name=name, pubkey=bytes(key.verify_key), peer_id=peer_id_of(identity),
                              p2p=(p2p,), rpc=f"http://{rpc_listen}"))
        nodes.append(NodeInfo(name, home, f"http://{rpc_listen}", p2p, token, read_token))
    params = {**NEW_CHAIN_PARAMS, **(params or {})}
    if not dkg:  # the dealt epoch's public parameters are on chain from genesis (node.runtime.oprf_resharing)
        params.setdefault("oprf_epoch_public", oprf.encode_epoch_public(public).hex())
    genesis = Genesis(chain_id=chain_id, genesis_time=datetime.now(UTC).isoformat(timespec="seconds"),
                      members=tuple(members), params=params)
    for info in nodes:
        genesis.save(info.home / "genesis.json")
    # Every node's operator token: a secret, 0600 like the keys.
    write_secret(out / "testnet.json", json.dumps(
        {"chain_id": chain_id,
         "nodes": [{"name": x.name, "home": str(x.home), "rpc": x.rpc, "p2p": x.p2p, "token": x.token,
                    "read_token": x.read_token} for x in nodes]}, indent=2) + "\n")
    return nodes


def add_operator_token(home: Path) -> str:
    """A new admin token named operator in HOME/tokens.json, kept for local tools in HOME/keys/operator.token."""
    token = add_token(home / "tokens.json", "operator", [ADMIN])
    write_secret(home / "keys" / "operator.token", token + "\n")
    return token


def load(out: Path) -> list[NodeInfo]:
    data = json.loads((out / "testnet.json").read_text())
    return [NodeInfo(x["name"], Path(x["home"]), x["rpc"], x["p2p"], x["token"], x.get("read_token"))
            for x in data["nodes"]]


def start_node(info: NodeInfo, wrap: list[str] = ()) -> subprocess.Popen:
    """`radchain start` for one node in its own session (so a terminal's Ctrl-C reaches only the
    supervisor, which stops the nodes in order); output appended to HOME/node.log. `wrap` prefixes the
    command, e.g. ["ip", "netns", "exec", NS]."""
    fd = os.open(info.home / "node.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # may name patients' AE titles and peers: not for other users of the machine
    with os.fdopen(fd, "ab") as log:
        return subprocess.Popen([*wrap, sys.executable, "-m", "node.cli", "start", "--home", str(info.home)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@cache
def shared_tls_context() -> ssl.SSLContext:
    """Pass as `verify=` to one-shot httpx calls: httpx otherwise builds a context (loading the CA bundle) for
    every call, ~30 ms of CPU, ten times what the call itself costs on loopback, even for plain http://.
    The tests and benchmarks call in polling loops."""
    return ssl.create_default_context()


def rpc_call(url: str, method: str, params: dict | None = None, token: str | None = None,
             timeout: float = 5.0) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}},
                        headers=headers, timeout=timeout, verify=shared_tls_context())
    try:
        return answer.json()
    except ValueError as exc:  # a node answered outside JSON-RPC: say how, for whoever reads the failure
        raise ValueError(f"{method} at {url}: HTTP {answer.status_code}, headers {dict(answer.headers)}, "
                         f"body {answer.content[:200]!r}") from exc


def poll(predicate, timeout: float, what: str) -> None:
    """Call `predicate` until it is true; a node that is not up yet (connection or RPC errors) is not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (httpx.HTTPError, RuntimeError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def wait_ready(nodes: list[NodeInfo], timeout: float = 60.0, peers: int | None = None) -> None:
    """Until every node answers `status` (and sees `peers` peers, when given)."""
    deadline = time.monotonic() + timeout
    for info in nodes:
        poll(lambda info=info: rpc_call(info.rpc, "status", token=info.token, timeout=2)["result"]["peers"]
             >= (peers or 0),
             max(0.1, deadline - time.monotonic()), f"{info.name} ready (see {info.home / 'node.log'})")


def stop(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_base_port(count: int, host: str = "127.0.0.1", low: int = _TEST_PORT_LOW,
                   high: int = _TEST_PORT_HIGH) -> int:
    """A base port with `count` consecutive free ports above it (for tests and benchmarks), below Linux's
    ephemeral range (32768+) so an outgoing connection cannot take a node's port between check and bind."""
    for _ in range(200):
        base = _PORT_RNG.randrange(low, high - count)
        span = range(base, base + count)
        if any(p in _ISSUED_PORTS for p in span) or not all(_bindable(host, p) for p in span):
            continue
        _issue(span)
        return base
    raise RuntimeError("no free port range found")


# What a failed test shows of each of its nodes' logs (tests/runtime/conftest.py).
LOG_TAIL_LINES = 40


def log_tail(info: NodeInfo, lines: int = LOG_TAIL_LINES, max_bytes: int = 64 * 1024) -> list[str]:
    """The last `lines` whole lines of a node's log (HOME/node.log), read from at most its last `max_bytes`;
    [] when the node never logged."""
    try:
        with open(info.home / "node.log", "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            tail = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    if size > max_bytes:
        tail = tail[1:]  # the read began inside a line
    return tail[-lines:]


class LocalTestnet:
    """N real node processes on this machine: start, kill -9, restart, and RPC helpers."""

    def __init__(self, out: Path, n: int = 4, *, hosts: list[str] | None = None, params: dict | None = None,
                 config_extra: dict | None = None, wrap: list[str] | None = None):
        base = free_base_port(2 * n) if hosts is None else 26600
        self.out = out
        self.nodes = generate(n, out, base_port=base, hosts=hosts, params=params, config_extra=config_extra)
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.config_extra = config_extra
        self.wrap = wrap or [[] for _ in range(n)]  # per-node command prefix, e.g. ip netns exec NS

    def start(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.nodes))):
            self.procs[j] = start_node(self.nodes[j], self.wrap[j])

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        self.procs[i] = None

    def stop_all(self) -> None:
        stop([p for p in self.procs if p is not None])
        self.procs = [None] * len(self.nodes)

    def rpc(self, i: int, method: str, params: dict | None = None, timeout: float = 10.0):
        info = self.nodes[i]
        reply = rpc_call(info.rpc, method, params, info.token, timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"{info.name} {method}: {reply['error']}")
        return reply["result"]

    def metrics(self, i: int, name: str, timeout: float = 10.0) -> dict[str, float]:
        """Node i's /metrics samples of metric `name`, by label set ('' when it has none), e.g.
        metrics(0, "radchain_view_change_triggers_total")['{trigger="request_timeout"}']."""
        info = self.nodes[i]
        text = httpx.get(info.rpc + "/metrics", headers={"Authorization": f"Bearer {info.read_token}"},
                         timeout=timeout, verify=shared_tls_context()).text
        out = {}
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series == name or series.startswith(name + "{"):
                out[series[len(name):]] = float(value)
        return out

    def wait_ready(self, indexes=None, timeout: float = 60.0) -> None:
        chosen = [self.nodes[i] for i in (indexes if indexes is not None else range(len(self.nodes)))]
        wait_ready(chosen, timeout=timeout)

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        poll(predicate, timeout, what)

    def height(self, i: int) -> int:
        return self.rpc(i, "status", timeout=3)["height"]

    def add_node(self, name: str | None = None) -> tuple[NodeInfo, dict]:
        """A home for a hospital joining the running consortium (same genesis and PSK, new
        keys and ports); not started. Returns its NodeInfo and what the members must approve
        (member.added fields: subject, subject_key, peer_id, addr). Index = len(nodes) - 1 afterwards."""
        from node.runtime.keys import load_member_key
        from node.runtime.settings import load_config

        i = len(self.nodes)
        name = name or member_name(i)
        first = load_config(self.nodes[0].home)
        base = free_base_port(2)
        home = (self.out / name).resolve()
        p2p, rpc_listen = f"/ip4/127.0.0.1/tcp/{base}", f"127.0.0.1:{base + 1}"
        create_member_key(home / "keys" / "member.key")
        identity = load_or_create_identity(home / "keys" / "p2p.key")
        write_config(home, name=name, p2p_listen=p2p, rpc_listen=rpc_listen, psk=first.psk,
                     extra=self.config_extra)
        # A joining member gets the OPRF epochs' public parameters but no key share: the shares were dealt
        # to the genesis members (docs/PSEUDONYMS.md), and its own local pseudonym key.
        ensure_local_secrets(home)
        for public in load_epochs(self.nodes[0].home).publics.values():
            write_epoch(home, public, None)
        Genesis.load(self.nodes[0].home).save(home / "genesis.json")
        info = NodeInfo(name, home, f"http://{rpc_listen}", p2p, add_operator_token(home),
                        add_token(home / "tokens.json", "reader", [READ]))
        self.nodes.append(info)
        self.procs.append(None)
        self.wrap.append([])
        key = load_member_key(home / "keys" / "member.key")
        return info, {"subject": name, "subject_key": bytes(key.verify_key), "peer_id": peer_id_of(identity),
                      "addr": p2p}
