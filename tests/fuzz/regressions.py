"""Every generated input that ever made a decoder raise something other than its own error type, by target
name (fuzzkit.Target.name), as hex. test_fuzz_decoders.py replays each one in `make test`.

When the soak fuzz (or `python tests/fuzz/fuzzkit.py`) reports a finding, add its hex here with the date
and what it broke, then fix the decoder.
"""

REGRESSIONS: dict[str, list[str]] = {
    # 2026-12-01, issue 9 defect 1: a bin key among the str keys of a tx body made the field-order check
    # compare bytes with str (TypeError) before the signature was checked. Found by the mutator in 3,000
    # inputs with the fix reverted: a consent.granted tx whose "v" key became b"v" (moved), and an
    # instances.accessed tx whose "outcome" key became bin.
    "tx": [
        "92c4cc8ba5636861696ead726164636861696e2d74657374a6636c69656e74c4208a88e3dd7409f195fd52db2d3cba5d72ca67"
        "09bf1d94121bf3748801b40f6f5ca76772616e746565a6686f73702d62a66d656d626572a6686f73702d61a56e6f6e6365c410"
        "6e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6ea770617469656e74c410448e4809c9c0a1012e0306f9498f6916a7707572706f7365a5"
        "5452454154c4017601a573636f7065a57374756479a27473cf000001a3185c5000a474797065af636f6e73656e742e6772616e"
        "746564c440a05cad785f151b3bdf3997c515f309362d17b4eb44da9941d55934f290bd66766845c8fcad369c051898704fe002"
        "f00087041005f92d9e558d2cb0426c07980d",
        # the issue's own example: {"type": "instances.accessed", b"zz": 1} with a zero signature
        "92c41e82a474797065b2696e7374616e6365732e6163636573736564c4027a7a01c440" + "00" * 64,
    ],
    # the same bug through a tx-gossip batch: the exception escaped TxGossip.on_batch and the inbox loop
    "gossip frame": [
        "91c5013c92c4f78da6616374696f6ea152a5636861696ead726164636861696e2d74657374a6636c69656e74c4208a88e3dd74"
        "09f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca66d656d626572a6686f73702d61a56e6f6e6365c4100000"
        "0000000000000000000000000001a770617469656e74c410b1922feab7236e5f8fe9d9f1e4ddba60a7707572706f7365a55452"
        "454154a57374756479c410fd1b3dda662cdb9f8ace8f2a636a63c5a27473cf000001a3185c5001a474797065b2696e7374616e"
        "6365732e6163636573736564c4076f7574636f6d6500a475736572c4109d8866c9846a7bbe1969aa115c2fccd6a176c40131c4"
        "40793ec8307cbf7556f75686a0131475be3a6936ce96cd30d51185a1bb05b33a5623b8c5504b95982e292176753cb8ea697795"
        "dedc1736ef603772cc278fa52902",
    ],
}
