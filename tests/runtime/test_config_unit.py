"""Node configuration (node/runtime/settings.py): a config written by `radchain init` loads back as written,
and every bad value an operator (or a tampered file) can put in config.toml is a ConfigError naming the key,
which `radchain start` prints as one line and exit 2, never a traceback."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.runtime.settings import ConfigError, load_config, write_config

PSK = "11" * 32
PKEY = "22" * 32
BASE = {
    "node": 'name = "hosp-a"',
    "p2p": f'listen = "/ip4/127.0.0.1/tcp/26656"\npsk = "{PSK}"',
    "rpc": 'listen = "127.0.0.1:26657"',
}


def _home(tmp_path, text: str):
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def _toml(**sections: str) -> str:
    """BASE with sections replaced (a value of None drops the section); a section given as "= value" is
    written as a top-level key rather than a table."""
    merged = {k: v for k, v in {**BASE, **sections}.items() if v is not None}
    # top-level keys first: after a [table] header they would belong to that table
    out = [f"{name} {body}" for name, body in merged.items() if body.startswith("=")]
    out += [f"[{name}]\n{body}" for name, body in merged.items() if not body.startswith("=")]
    return "\n".join(out) + "\n"


def test_written_config_loads_back_with_its_values_and_defaults(tmp_path):
    home = tmp_path / "home"
    write_config(home, name="hosp-a", p2p_listen="/ip4/127.0.0.1/tcp/7001", rpc_listen="127.0.0.1:8001",
                 psk=b"\x01" * 32, extra={"dicom": {"aet": "RADCHAIN"}})
    assert os.stat(home / "config.toml").st_mode & 0o077 == 0  # holds the PSK
    cfg = load_config(home)
    assert (cfg.name, cfg.p2p_listen, cfg.rpc.host, cfg.rpc.port) == ("hosp-a", "/ip4/127.0.0.1/tcp/7001",
                                                                     "127.0.0.1", 8001)
    assert cfg.psk == b"\x01" * 32
    assert cfg.extra == {"dicom": {"aet": "RADCHAIN"}}  # a plugin's section is kept for the plugin
    assert cfg.consensus.checkpoint_interval == 16 and cfg.mempool.max_txs == 100_000
    assert cfg.wal_dir == home.resolve() / "data" / "wal"


def test_tuning_values_are_read_and_typed(tmp_path):
    cfg = load_config(_home(tmp_path, _toml(consensus="progress_timeout = 3\nwal_fsync = false",
                                            mempool="max_txs = 500\ngossip_interval = 0.01")))
    assert cfg.consensus.progress_timeout == 3.0 and type(cfg.consensus.progress_timeout) is float
    assert load_config(_home(tmp_path, _toml(log='level = "debug"', store="sync = true"))).store_sync is True
    assert load_config(tmp_path).log_level == "DEBUG"
    assert cfg.consensus.wal_fsync is False
    assert cfg.mempool.max_txs == 500 and cfg.mempool.gossip_interval == 0.01


BAD = [
    # (sections, words the error must contain)
    ({"node": None}, "node.name"),
    ({"node": 'name = ""'}, "node.name"),
    ({"node": "name = 7"}, "node.name"),
    ({"p2p": f'psk = "{PSK}"'}, "p2p.listen"),
    ({"p2p": 'listen = "/ip4/127.0.0.1/tcp/1"\npsk = "zz"'}, "p2p.psk"),
    ({"p2p": 'listen = "/ip4/127.0.0.1/tcp/1"\npsk = "1122"'}, "p2p.psk"),
    # the shared pseudonym key of before issue 13 is refused, whatever its form (node.runtime.tokenizer)
    ({"pseudonym": f'key = "{PKEY}"'}, "[pseudonym]"),
    ({"pseudonym": "key = 5"}, "[pseudonym]"),
    ({"rpc": 'listen = "localhost"'}, "rpc.listen"),
    ({"rpc": 'listen = "127.0.0.1:http"'}, "rpc.listen"),
    ({"rpc": 'listen = "127.0.0.1:"'}, "rpc.listen"),
    ({"rpc": 'listen = "127.0.0.1:65536"'}, "rpc.listen"),  # was accepted: a bind error at start
    ({"rpc": 'listen = "127.0.0.1:\u00b2"'}, "rpc.listen"),  # "²" passed isdigit(), then int() raised
    ({"rpc": 'listen = "127.0.0.1:1"\ntokens = {admin = "secret"}'}, "rpc.tokens"),
    ({"rpc": 'listen = "127.0.0.1:1"\nmax_body_bytes = "1MB"'}, "rpc.max_body_bytes"),
    ({"rpc": 'listen = "127.0.0.1:1"\nallowed_hosts = "example.org"'}, "rpc.allowed_hosts"),
    ({"rpc": 'listen = "127.0.0.1:1"\nallowed_hosts = [1]'}, "rpc.allowed_hosts"),
    ({"rpc": 'listen = "127.0.0.1:1"\nread_requires_token = "no"'}, "rpc.read_requires_token"),
    ({"consensus": "pipeline = 0"}, "consensus.pipeline"),
    ({"consensus": "progress_timeout = -1.5"}, "consensus.progress_timeout"),
    ({"consensus": "checkpoint_interval = true"}, "consensus.checkpoint_interval"),
    ({"consensus": "wal_fsync = 1"}, "consensus.wal_fsync"),
    ({"consensus": "pipelin = 4"}, "consensus.pipelin"),  # a typo is not silently ignored
    ({"mempool": "max_txs = -5"}, "mempool.max_txs"),
    # A section that is not a table: was an AttributeError traceback from `radchain start`.
    ({"node": '= "hosp-a"'}, "node"),
    ({"p2p": '= "/ip4/127.0.0.1/tcp/1"'}, "p2p"),
    ({"consensus": "= 5"}, "consensus"),
    ({"mempool": '= "big"'}, "mempool"),
    ({"rpc": '= ["127.0.0.1:1"]'}, "rpc"),
    ({"pseudonym": f'= "{PKEY}"'}, "pseudonym"),
    ({"log": '= "DEBUG"'}, "log"),
    ({"store": "= true"}, "store"),
    # Not finite or not whole: were an OverflowError/ValueError traceback, a silently accepted NaN timeout,
    # or a count of 0.5 truncated to 0 (a mempool that refuses every tx).
    ({"consensus": "progress_timeout = nan"}, "consensus.progress_timeout"),
    ({"consensus": "progress_timeout = inf"}, "consensus.progress_timeout"),
    ({"rpc": 'listen = "127.0.0.1:1"\nmax_body_bytes = inf'}, "rpc.max_body_bytes"),
    ({"mempool": "max_txs = nan"}, "mempool.max_txs"),
    ({"mempool": "max_txs = 0.5"}, "mempool.max_txs"),
    ({"consensus": "pipeline = 2.5"}, "consensus.pipeline"),
    ({"mempool": "sign_batch = 0"}, "mempool.sign_batch"),
    ({"mempool": "sign_batch = 257"}, "mempool.sign_batch"),
    # Were silently taken: "no" read as true (store.sync on), an unknown level as INFO, and a level naming
    # another attribute of the logging module (BASIC_FORMAT) a ValueError traceback at start.
    ({"store": 'sync = "no"'}, "store.sync"),
    ({"log": 'level = "LOUD"'}, "log.level"),
    ({"log": 'level = "basic_format"'}, "log.level"),
    ({"log": "level = 10"}, "log.level"),
    # Fine one by one, contradictory together: were a ValueError traceback when the replica started.
    ({"consensus": "checkpoint_interval = 16\nwatermark_window = 40"}, "consensus]: watermark_window"),
    ({"consensus": "checkpoint_interval = 32\nwatermark_window = 32"}, "consensus]: watermark_window"),
    ({"consensus": "pipeline = 128"}, "consensus]: pipeline"),
]


@pytest.mark.parametrize("sections,names", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_a_bad_value_is_a_config_error_naming_the_key(tmp_path, sections, names):
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(_home(tmp_path, _toml(**sections)))


def test_missing_or_unparsable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="radchain init"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config.toml"):
        load_config(_home(tmp_path, "[node\nname="))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["consensus", "mempool", "rpc"]),
       key=st.sampled_from(["pipeline", "progress_timeout", "max_txs", "gossip_interval", "max_body_bytes",
                            "checkpoint_interval", "rate_limit_per_second", "wal_fsync", "listen"]),
       value=st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.text(max_size=8), st.lists(st.integers(0, 3), max_size=2)))
def test_any_typed_value_loads_sensibly_or_is_a_config_error(tmp_path, section, key, value):
    """What a hostile or careless edit can put under a key: either a ConfigError, or a config whose numbers
    are finite, positive and of the field's type."""
    if isinstance(value, float) and math.isnan(value):
        literal = "nan"
    elif isinstance(value, float) and math.isinf(value):
        literal = "inf" if value > 0 else "-inf"
    elif isinstance(value, bool):
        literal = "true" if value else "false"
    elif isinstance(value, str):
        literal = '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    else:
        literal = repr(value)
    body = f"{key} = {literal}"
    if section == "rpc" and key != "listen":
        body = 'listen = "127.0.0.1:1"\n' + body
    try:
        cfg = load_config(_home(tmp_path, _toml(**{section: body})))
    except ConfigError:
        return
    for obj in (cfg.consensus, cfg.mempool, cfg.rpc):
        for name, default in vars(type(obj)()).items():
            got = getattr(obj, name)
            assert type(got) is type(default), (name, got)
            if type(got) in (int, float):
                assert math.isfinite(got) and got > 0, (name, got)
