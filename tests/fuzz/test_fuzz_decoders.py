"""Fuzz every decoder a member or a client can reach (issue 9): 0 exceptions other than the decoder's own.

Targets (tests/fuzz/fuzzkit.py): tx (decode_tx and Chain.check_tx), proposal (Chain.validate_proposal),
block records and headers, Chain.execute of a synced (payload, certificate), certificates, each of the ten
consensus message kinds, tx-gossip frames through TxGossip.on_batch, sync frames through BlockSync.serve
and the reply decoders, and JSON-RPC bodies through the real HTTP handler of an in-process node.

`make test` replays every input that ever failed (regressions.py), runs QUICK mutated inputs per target and
a few hundred hypothesis examples; `make soak` runs SOAK (100,000) mutated inputs per target and thousands
of hypothesis examples. The figures are in docs/FUZZING.md.
"""

from __future__ import annotations

import os
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzkit  # noqa: E402
from regressions import REGRESSIONS  # noqa: E402

QUICK = 1500
SOAK = 100_000
NAMES = ["tx", "proposal", "block", "execute (synced block)", "certificate",
         *(f"consensus.{k}" for k in ("preprepare", "prepare", "commit", "checkpoint", "viewchange", "newview",
                                      "status", "fetch", "payload", "decided")),
         "gossip frame", "sync frame"]
HYPOTHESIS = dict(deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    built = {t.name: t for t in fuzzkit.build_targets(str(tmp_path_factory.mktemp("fuzz")))}
    assert sorted(built) == sorted(NAMES)  # a new decoder must be listed here (and in docs/FUZZING.md)
    return built


@pytest.fixture(scope="module")
def rpc_target(tmp_path_factory):
    target = fuzzkit.RpcTarget(str(tmp_path_factory.mktemp("fuzz-rpc")))
    yield target
    target.close()


def _check(target: fuzzkit.Target, data: bytes) -> None:
    """Feed one input; only the target's own error types may come out."""
    try:
        target.check(data)
    except target.errors:
        pass


def _no_findings(result: fuzzkit.Result) -> None:
    assert not result.findings, (f"{result.name}: {len(result.findings)} finding(s); first input "
                                 f"{result.findings[0][0][:400].hex()}\n{result.findings[0][1]}")


# ---------------------------------------------------------------------------------------------- make test

@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_every_input_that_ever_failed_is_refused_cleanly(targets, name):
    for hexed in REGRESSIONS[name]:
        _check(targets[name], bytes.fromhex(hexed))


def test_the_regressions_are_refused_for_the_right_reason(targets):
    from node.ledger.tx import TxError, decode_tx

    for hexed in REGRESSIONS["tx"]:
        with pytest.raises(TxError, match="field names must be strings"):
            decode_tx(bytes.fromhex(hexed))


@pytest.mark.parametrize("name", NAMES)
def test_quick_fuzz(targets, name):
    result = fuzzkit.run(targets[name], QUICK, seed=1)
    _no_findings(result)
    assert result.inputs == QUICK


async def test_quick_fuzz_rpc(rpc_target):
    result = await fuzzkit.run_rpc(rpc_target, QUICK, seed=1)
    _no_findings(result)
    # the inputs reach the methods, not only the framing checks: successes and parameter errors
    assert rpc_target.outcomes["result"] > QUICK // 20 and rpc_target.outcomes[-32602] > QUICK // 20


def test_the_mutator_finds_the_issue_bug_when_it_is_reintroduced(targets, monkeypatch):
    """The fuzzer must be able to fail: with the key type check of defect 1 taken out again, the quick run
    of the tx target reports TypeError findings."""
    import node.ledger.tx as tx

    real = tx._check_fields_slowly

    def without_key_type_check(fields: dict, where: str) -> None:
        if any(type(k) is not str for k in fields):
            sorted(fields)  # what the old order check did: compare bytes with str
        real(fields, where)

    monkeypatch.setattr(tx, "_check_fields_slowly", without_key_type_check)
    tx._PLANS.clear()  # known shapes skip the slow check
    result = fuzzkit.run(targets["tx"], 5000, seed=0, stop_after=1)
    assert result.findings and "TypeError" in result.findings[0][1]


# ---------------------------------------------------------------------------------------------- hypothesis

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=70))
keys = st.text(max_size=12) | st.binary(max_size=12) | st.sampled_from(["type", "v", "chain", "op", "from",
                                                                        "height", "blocks", b"type", b"zz"])
msgpack_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                              | st.dictionaries(keys, inner, max_size=6), max_leaves=30)


def _hypothesis_fuzz(targets, name: str, examples: int) -> None:
    target = targets[name]

    @settings(max_examples=examples, **HYPOTHESIS)
    @given(value=msgpack_values)
    def any_value(value):
        _check(target, msgpack.packb(value, use_bin_type=True))

    @settings(max_examples=examples, **HYPOTHESIS)
    @given(rnd=st.randoms(use_true_random=False))
    def mutated(rnd):
        _check(target, fuzzkit.generate(rnd, target.seeds))

    any_value()
    mutated()


@pytest.mark.parametrize("name", NAMES)
def test_hypothesis_quick(targets, name):
    _hypothesis_fuzz(targets, name, 25)


# ---------------------------------------------------------------------------------------------- make soak

@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", NAMES)
def test_soak_fuzz(targets, name, capsys):
    result = fuzzkit.run(targets[name], SOAK, seed=2)
    with capsys.disabled():
        print("\n" + fuzzkit.report([result]).splitlines()[1])
    _no_findings(result)
    assert result.inputs == SOAK


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_soak_fuzz_rpc(rpc_target, capsys):
    result = await fuzzkit.run_rpc(rpc_target, SOAK, seed=2)
    with capsys.disabled():
        print("\n" + fuzzkit.report([result]).splitlines()[1], dict(rpc_target.outcomes.most_common()))
    _no_findings(result)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", NAMES)
def test_hypothesis_soak(targets, name):
    _hypothesis_fuzz(targets, name, 1000)
