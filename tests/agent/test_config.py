"""Agent config: precedence (defaults < file < env < flags), validation naming the key, 0600 files."""

import os
import stat

import pytest

from canidae.agent.config import AgentConfig, ServerPeer, load_config, write_config
from canidae.core.errors import InvalidInput
from canidae.core.types import Resources, Role

BASE = """
node_id = "s1"
role = "server"
api = "127.0.0.1:7100"
raft = "127.0.0.1:7200"
token = "t"
identity_public_key = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"
admin_token_hash = "abababababababababababababababababababababababababababababababab"
cluster_password = "p"
servers = [{id = "s1", api = "127.0.0.1:7100", raft = "127.0.0.1:7200"}]
insecure_http = true
"""


def _write(tmp_path, text):
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return str(p)


def test_precedence_defaults_file_env_flags(tmp_path):
    path = _write(tmp_path, BASE + 'zone = "zf"\nregion = "rf"\n')
    cfg = load_config(path, env={"CANIDAE_ZONE": "ze", "CANIDAE_CELL": "ce"}, overrides={"cell": "cflag"})
    assert cfg.zone == "ze"          # env beats file
    assert cfg.region == "rf"        # file beats default
    assert cfg.cell == "cflag"       # flag beats env
    assert cfg.capacity == Resources(4000, 8192, 1000)  # default


@pytest.mark.parametrize("extra, key", [
    ('bogus = 1\n', "bogus"),
    ('[capacity]\ncpu = -5\n', "capacity.cpu"),
    ('[raft_settings]\nelection_min_s = "fast"\n', "raft_settings.election_min_s"),
    ('[raft_settings]\nturbo = true\n', "raft_settings.turbo"),
    ('[heartbeat]\ninterval_s = 2.0\nttl_s = 1.0\n', "heartbeat.ttl_s"),
])
def test_invalid_config_names_the_key(tmp_path, extra, key):
    with pytest.raises(InvalidInput) as e:
        load_config(_write(tmp_path, BASE + extra))
    assert key in e.value.message


def test_bad_address_and_missing_password(tmp_path):
    with pytest.raises(InvalidInput, match="api"):
        load_config(_write(tmp_path, BASE.replace('api = "127.0.0.1:7100"', 'api = "nope"')))
    with pytest.raises(InvalidInput, match="cluster_password"):
        load_config(_write(tmp_path, BASE.replace('cluster_password = "p"', "")))
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(_write(tmp_path, "node_id = "))
    with pytest.raises(InvalidInput, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


def test_written_config_is_private_and_round_trips(tmp_path):
    cfg = AgentConfig(node_id="s1", role=Role.SERVER, api="127.0.0.1:7100", raft="127.0.0.1:7200", token="t",
                      identity_public_key="O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik", admin_token_hash="ab" * 32,
                      cluster_password="p", servers=(ServerPeer("s1", "127.0.0.1:7100", "127.0.0.1:7200"),),
                      tls_ca="/c/ca.pem", tls_cert="/c/s1.pem", tls_key="/c/s1.key")
    path = str(tmp_path / "out" / "agent.toml")
    write_config(cfg, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_config(path) == cfg


def test_the_identity_keys_are_required(tmp_path):
    with pytest.raises(InvalidInput, match="identity_public_key"):
        load_config(_write(tmp_path, BASE.replace('identity_public_key = "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"', "")))
    with pytest.raises(InvalidInput, match="admin_token_hash"):
        load_config(_write(tmp_path, BASE.replace('"' + "ab" * 32 + '"', '"plain-token"')))
