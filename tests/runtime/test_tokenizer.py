"""node.tokenizer pieces that need no network: the token cache at rest, key files, the RPC errors a spool sees."""

from __future__ import annotations

import plyvel
import pytest

from node.dicom.delivery import Deliverer, RetryLater
from node.ledger import oprf
from node.rpc.submit import tokenize_error
from node.runtime.tokenizer import TokenCache, TokenizeError, ensure_local_secrets, load_epochs, write_epoch


def test_cache_is_sealed_keyed_and_refuses_moved_or_tampered_values(tmp_path):
    ensure_local_secrets(tmp_path)
    cache = TokenCache(tmp_path)
    x1, x2 = oprf.token_input(1, "patient", "1234567", "MPI"), oprf.token_input(1, "patient", "7654321", "MPI")
    t1, t2 = b"\x00\x01" + b"a" * 14, b"\x00\x01" + b"b" * 14
    cache.put_many([(x1, t1), (x2, t2)])
    assert cache.get(x1) == t1 and cache.get(x2) == t2 and cache.get(x1 + b"x") is None
    cache.close()
    db = plyvel.DB(str(tmp_path / "token-cache"))
    items = dict(db.iterator())
    raw = b"".join(k + v for k, v in items.items())
    for secret in (b"1234567", t1, t2):
        assert secret not in raw  # neither the identifier nor the token at rest
    (k1, v1), (k2, v2) = sorted(items.items())
    db.put(k1, v2)  # a sealed value moved to another identifier's slot
    db.put(k2, v2[:-1] + bytes([v2[-1] ^ 1]))  # a tampered value
    db.close()
    cache = TokenCache(tmp_path)
    assert cache.get(x1) is None and cache.get(x2) is None
    cache.close()
    # another home's cache key opens nothing
    (tmp_path / "keys" / "token-cache.key").write_text("00" * 32)
    other = TokenCache(tmp_path)
    assert other.get(x1) is None
    other.close()


def test_epoch_files_hold_one_share_and_refuse_a_wrong_one(tmp_path):
    public, shares = oprf.deal(3, 4, epoch=7)
    write_epoch(tmp_path, public, shares[1])
    keys = load_epochs(tmp_path)
    assert keys.current == 7 and keys.shares[7].index == 2 and keys.publics[7] == public
    assert oct((tmp_path / "keys" / "oprf" / "epoch-7.share").stat().st_mode & 0o777) == "0o600"
    other_public, other_shares = oprf.deal(3, 4, epoch=7)
    (tmp_path / "keys" / "oprf" / "epoch-7.share").write_bytes(oprf.encode_key_share(other_shares[1]))
    with pytest.raises(ValueError, match="epoch-7.public"):
        load_epochs(tmp_path)


@pytest.mark.parametrize("exc", [TokenizeError("unavailable", "only 1 of t=3 valid partial evaluations"),
                                 TokenizeError("rate_limited", "refused by rate limit", 0.4),
                                 TokenizeError("rate_limited", "refused by rate limit", None)])
def test_pseudonym_refusals_are_retried_by_the_dicom_spool_not_dead_lettered(exc):
    err = tokenize_error(exc)
    assert err.data["reason"].startswith("pseudonym_") and err.data["retry_after"] > 0
    verdict = Deliverer._classify({"jsonrpc": "2.0", "id": 1, "error": err.to_json()}, 200)
    assert isinstance(verdict, RetryLater), verdict
