"""`agent init` issues each agent its own credential from the cluster's identity file and never
writes the admin token or the signing key into an agent's config."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib

from canidae.agent.identity import Authenticator, Identity, Kind


def init(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "canidae", "agent", "init", "--identity",
                           str(tmp_path / "identity.toml"), *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=False)


def test_agent_init_issues_one_credential_per_agent_and_keeps_the_admin_token_out(tmp_path):
    peer = "--peer=s1=127.0.0.1:7100,127.0.0.1:7200"
    assert init(tmp_path, "--out", "s1.toml", "--name", "s1", peer).returncode == 0
    ident = Identity.load(str(tmp_path / "identity.toml"))
    assert stat.S_IMODE(os.stat(tmp_path / "identity.toml").st_mode) == 0o600
    r = init(tmp_path, "--out", "c1.toml", "--name", "c1", "--client", peer, "--listen", "127.0.0.1:7101")
    assert r.returncode == 0, r.stderr
    assert Identity.load(str(tmp_path / "identity.toml")) == ident  # the same cluster: reused, not remade
    auth = Authenticator(ident.admin_hash, ident.public_key)
    for name, kind in (("s1", Kind.SERVER), ("c1", Kind.NODE)):
        raw = (tmp_path / f"{name}.toml").read_text()
        assert ident.admin_token not in raw and ident.signing_key not in raw
        cfg = tomllib.loads(raw)
        who = auth.identify(cfg["token"])
        assert who is not None and (who.kind, who.name) == (kind, name)
        assert ("cluster_password" in cfg) == (name == "s1")
    assert auth.identify(ident.admin_token).kind is Kind.ADMIN
    # Another cluster's identity issues credentials this one refuses.
    other = tmp_path / "other"
    other.mkdir()
    assert init(other, "--out", "x.toml", "--name", "c1", "--client", peer).returncode == 0
    assert auth.identify(tomllib.loads((other / "x.toml").read_text())["token"]) is None
