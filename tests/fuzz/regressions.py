"""Every generated input that ever made a decoder raise something other than its own error type, by target
name (fuzzkit.Target.name), as hex. test_fuzz_decoders.py replays each one in `make test`.

When the soak fuzz (or `python tests/fuzz/fuzzkit.py`) reports a finding, add its hex here with the date
and what it broke, then fix the decoder.
"""

REGRESSIONS: dict[str, list[str]] = {
    # 2026-12-01, issue 9 defect 1: a bin key among the str keys of a tx body made the field-order check
    # compare bytes with str (TypeError) before the signature was checked. Found by the mutator in 3,000
    # inputs with the fix reverted: a consent.granted tx whose "v" key became b"v" (moved), and an
    # instances.accessed tx whose "outcome" key became bin. (The consent tx's grantee is a 16-byte token since
    # issue 13, re-encoded so, key order and bin key unchanged.)
    "tx": [
        "92c4d78ba5636861696ead726164636861696e2d74657374a6636c69656e74c4208a88e3dd7409f195fd52db2d3cba5d72ca67"
        "09bf1d94121bf3748801b40f6f5ca76772616e746565c4100d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0da66d656d626572a6686f73"
        "702d61a56e6f6e6365c4106e6e6e6e6e6e6e6e6e6e6e6e6e6e6e6ea770617469656e74c410448e4809c9c0a1012e0306f9498f"
        "6916a7707572706f7365a55452454154c4017601a573636f7065a57374756479a27473cf000001a3185c5000a474797065af63"
        "6f6e73656e742e6772616e746564c440a05cad785f151b3bdf3997c515f309362d17b4eb44da9941d55934f290bd66766845c8"
        "fcad369c051898704fe002f00087041005f92d9e558d2cb0426c07980d",
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
    # 2026-12-01, soak run (input ~31,000 of seed 2): Certificate.decode converted with bytes() and int(), so a certificate whose
    # digest is the integer 2**32 allocated 4 GiB of zeros (and the digest-mismatch message then hexed it:
    # 8 GiB); msgpack refused to pack it in verify_certificate (ValueError, not CertificateError). Through
    # block sync, a member could make an honest node allocate gigabytes per block. Fix: type-checked fields.
    "certificate": [
        "84a668656967687401a47669657700a6646967657374cf0000000100000000a473696773939202c440ef579e6a79926aa6ce"
        "1324dc12e34ce8cc46bbcdb66d0dd167b28e42fc383033386dca8fb70692cee4d8360b8f509255e2e899b30bda088fa8e074"
        "f2a6841b099201c44089b1653e4036822d4dc6abdabcd337e08b46079511e7b5eae5ff503695f923626a851ab70a54639876"
        "34bf5f2f36e342bb883b21453f8a83a17b3b077707fb0c9202c440e88b830fcffb2adb5e77a8883a563b32a2dba51fb8756b"
        "e383cb46831380030e10fd0e691a970a3ee219d676e36f1dcf4478744f095602386a7ccffd56f99a0a",
        "84a668656967687401a47669657700a6646967657374cf0000000100000000a473696773939200c440b8e951716a8764b6e0"
        "a40576413c3ebdb31862c55524c62019c2bfb642afe852e5019684aad7060be61981889d927cd79d42f6f148f03e093b4074"
        "a4a3e3dd089201c4404fff752424e98c1f8a0fdf9f2d5e95e5912ef0d0f6efc82343d7ade6fccffa5d272e727be2e61da6c8"
        "c8330abdecf676eec11a6e93c7359ba1f78dba6a712b0c9202c4406f36fa7bd4555b8f4eb8af0babe5da99d536b27c6e5510"
        "93e9ed449b2f15db4782edf55d646ff0eccd13501014c14ed19407011070a0205beb4647ded7f97e00",
    ],
}
