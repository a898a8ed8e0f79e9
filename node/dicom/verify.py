"""verify-image: was this DICOM file altered since it was recorded, and is it recorded at other hospitals?

Everything is looked up on chain, through the node's JSON-RPC (get_block / get_tx, batched): a tx carries the
instance's keyed token (`instances`, HMAC under the recording hospital's local pseudonym key,
HOME/keys/local-pseudonym.key) and the raw SHA-256 `digest` / `pixel_digest` (rawdicom.py defines what they
cover). So:

* at the hospital that recorded it, the file's SOPInstanceUID token finds every record of the instance;
  comparing digests says UNCHANGED or ALTERED (and whether only metadata changed: same pixel digest);
  another hospital finds it by content only: UNCHANGED (the same digest recorded in a store);
* the same digest (or pixel digest) recorded in stored events by two members is a DUPLICATE (the same study
  stored at two hospitals).

The scan reads the whole chain (batched, ~O(txs)); a node-side digest index would make this O(1) and is the
obvious next step (reported to the node's owner).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.dicom.rawdicom import DicomFormatError, InstanceInfo, inspect_file

STORE_TYPES = {"instances.stored", "instances.transferred", "import"}


class ChainReader:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call_many(self, calls: list[tuple[str, dict]]) -> list:
        if not calls:
            return []
        body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
        reply = self.http.post("/", json=body)
        reply.raise_for_status()
        by_id = {item.get("id"): item for item in reply.json()}
        out = []
        for i in range(len(calls)):
            item = by_id.get(i, {})
            if "result" not in item:
                raise RuntimeError(f"node error for {calls[i][0]}: {item.get('error')}")
            out.append(item["result"])
        return out

    def height(self) -> int:
        return self.call_many([("status", {})])[0]["height"]

    def iter_txs(self, block_batch: int = 100, tx_batch: int = 500):
        """(height, tx hash, tx fields) for every committed tx, oldest first."""
        top = self.height()
        for start in range(1, top + 1, block_batch):
            blocks = self.call_many([("get_block", {"height": h})
                                     for h in range(start, min(top, start + block_batch - 1) + 1)])
            hashes = [(b["height"], h) for b in blocks for h in b["txs"]]
            for i in range(0, len(hashes), tx_batch):
                chunk = hashes[i:i + tx_batch]
                txs = self.call_many([("get_tx", {"hash": h}) for _, h in chunk])
                for (height, h), tx in zip(chunk, txs, strict=True):
                    yield height, h, tx["tx"]


@dataclass
class Record:
    height: int
    tx: str
    member: str
    type: str
    digest: str | None
    pixel_digest: str | None


@dataclass
class FileVerdict:
    path: str
    verdict: str                      # UNCHANGED, ALTERED, METADATA-CHANGED, NOT-RECORDED, NOT-DICOM
    detail: str = ""
    info: InstanceInfo | None = None
    records: list[Record] = field(default_factory=list)    # txs naming this instance
    same_content: list[Record] = field(default_factory=list)  # txs with this digest or pixel digest
    duplicate_members: list[str] = field(default_factory=list)


def verify_files(paths: list[Path], reader: ChainReader, pseudonymizer) -> list[FileVerdict]:
    verdicts, wanted = [], {}
    for path in paths:
        try:
            info = inspect_file(path.read_bytes())
        except (DicomFormatError, OSError) as exc:
            verdicts.append(FileVerdict(str(path), "NOT-DICOM", str(exc)))
            continue
        if not info.get("SOPInstanceUID"):
            verdicts.append(FileVerdict(str(path), "NOT-DICOM", "no SOPInstanceUID"))
            continue
        v = FileVerdict(str(path), "NOT-RECORDED", info=info)
        verdicts.append(v)
        wanted.setdefault(pseudonymizer.instance(info.get("SOPInstanceUID")).hex(), []).append(v)
    checked = [v for vs in wanted.values() for v in vs]
    by_digest: dict[str, list[FileVerdict]] = {}
    for v in checked:
        by_digest.setdefault(v.info.digest, []).append(v)
        if v.info.pixel_digest:
            by_digest.setdefault(v.info.pixel_digest, []).append(v)
    if wanted:
        for height, h, tx in reader.iter_txs():
            rec = None
            for token in tx.get("instances") or ():
                if token in wanted:
                    rec = rec or Record(height, h, tx["member"], tx["type"], tx.get("digest"),
                                        tx.get("pixel_digest"))
                    for v in wanted[token]:
                        v.records.append(rec)
            for key in {tx.get("digest"), tx.get("pixel_digest")} - {None}:
                for v in by_digest.get(key, ()):
                    r = rec or Record(height, h, tx["member"], tx["type"], tx.get("digest"), tx.get("pixel_digest"))
                    if r not in v.same_content:
                        v.same_content.append(r)
    for v in checked:
        _judge(v)
    return verdicts


def _judge(v: FileVerdict) -> None:
    info = v.info
    # Instance tokens are keyed by the recording hospital's local key (docs/PSEUDONYMS.md), so another
    # hospital finds the instance by its content instead: the same whole-file digest in a store. (Equal
    # pixel data alone is not the same instance: it says nothing about which record was edited.)
    with_digest = [r for r in v.records if r.digest] or \
        [r for r in v.same_content if r.digest == info.digest and r.type in STORE_TYPES]
    if any(r.digest == info.digest for r in with_digest):
        r = next(r for r in with_digest if r.digest == info.digest)
        v.verdict = "UNCHANGED"
        v.detail = f"matches the instance recorded by {r.member} at height {r.height} (tx {r.tx[:16]}...)"
    elif with_digest:
        r = with_digest[0]
        if info.pixel_digest and r.pixel_digest == info.pixel_digest:
            v.verdict = "METADATA-CHANGED"
            v.detail = (f"recorded by {r.member} at height {r.height} (tx {r.tx[:16]}...) with digest "
                        f"{r.digest[:16]}...; this file is {info.digest[:16]}...; pixel data identical "
                        "(header edited or re-encoded)")
        else:
            v.verdict = "ALTERED"
            v.detail = (f"recorded by {r.member} at height {r.height} (tx {r.tx[:16]}...) with digest "
                        f"{r.digest[:16]}...; this file is {info.digest[:16]}...; pixel data differs too")
    elif v.records:
        r = v.records[0]
        v.verdict = "NOT-RECORDED"
        v.detail = f"named by {r.type} at {r.member} (height {r.height}) but no digest was recorded for it"
    else:
        v.detail = "no transaction names this instance"
    stores = [r for r in v.same_content if r.type in STORE_TYPES and r.digest == info.digest] or \
             [r for r in v.same_content if r.type in STORE_TYPES]
    members = sorted({r.member for r in stores})
    if len(members) >= 2:
        v.duplicate_members = members


def summarize_studies(verdicts: list[FileVerdict]) -> dict[str, list[str]]:
    """StudyInstanceUID -> members that stored its content, when more than one did (a duplicate study)."""
    out: dict[str, set] = {}
    for v in verdicts:
        if v.info and v.duplicate_members:
            out.setdefault(v.info.get("StudyInstanceUID") or "?", set()).update(v.duplicate_members)
    return {k: sorted(s) for k, s in out.items()}
