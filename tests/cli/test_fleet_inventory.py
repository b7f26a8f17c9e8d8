"""``fleet bootstrap`` before any host is touched: the inventory is checked field by field (exit 2
naming the field), ``--plan`` says what each host would get, ``--limit`` picks hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from canidae.agent.identity import Identity
from canidae.agent.ops.fleet.inventory import agent_config, config_hash, load_inventory, select_hosts
from canidae.core.errors import InvalidInput
from canidae.core.types import Resources, Role

GOOD = """
[cluster]
name = "lab"
user = "ops"
key = "keys/id_ed25519"
install_dir = "/srv/canidae"

[[hosts]]
name = "s1"
address = "10.1.0.1"
role = "server"
zone = "z1"

[[hosts]]
name = "s2"
address = "10.1.0.2"
role = "server"
zone = "z2"
port = 2222

[[hosts]]
name = "s3"
address = "10.1.0.3"
role = "server"

[[hosts]]
name = "c1"
address = "10.1.0.4"
role = "client"
capacity = { cpu = 2000, mem = 1024, packs = 10 }
"""


def write(tmp_path, text, name="lab.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "canidae", *args], check=False, capture_output=True, text=True,
                          timeout=60,
                          cwd=cwd)


def test_a_good_inventory_gives_each_host_its_settings_and_the_cluster_defaults(tmp_path):
    inv = load_inventory(str(write(tmp_path, GOOD)))
    assert [h.name for h in inv.servers] == ["s1", "s2", "s3"] and [h.name for h in inv.clients] == ["c1"]
    s2 = inv.host("s2")
    assert (s2.port, s2.user, s2.zone, s2.install_dir) == (2222, "ops", "z2", "/srv/canidae")
    assert s2.key == str(tmp_path / "keys" / "id_ed25519")  # relative to the inventory
    assert s2.api == "10.1.0.2:7100" and s2.raft == "10.1.0.2:7200"
    assert inv.host("c1").raft == "" and inv.host("c1").capacity == Resources(2000, 1024, 10)


def test_each_host_gets_its_own_credential_and_only_servers_the_raft_password(tmp_path):
    inv = load_inventory(str(write(tmp_path, GOOD)))
    ident = Identity.new()
    s1 = agent_config(inv, inv.host("s1"), ident, Resources(1000, 100, 5))
    c1 = agent_config(inv, inv.host("c1"), ident, Resources(1000, 100, 5))
    assert s1.token == ident.node_credential("s1", Role.SERVER) and c1.token == ident.node_credential("c1", Role.CLIENT)
    assert s1.cluster_password == ident.cluster_password and c1.cluster_password == ""
    assert [p.id for p in c1.servers] == ["s1", "s2", "s3"]
    assert s1.capacity == Resources(1000, 100, 5) and c1.capacity == Resources(2000, 1024, 10)
    assert ident.admin_token not in repr(s1) + repr(c1)
    # The hash moves with any of its parts.
    base = config_hash(b"cfg", b"keys", "w1", "detached")
    assert base == config_hash(b"cfg", b"keys", "w1", "detached")
    assert len({base, config_hash(b"cfg2", b"keys", "w1", "detached"), config_hash(b"cfg", b"keys", "w2", "detached"),
                config_hash(b"cfg", b"keys", "w1", "systemd")}) == 4


@pytest.mark.parametrize("change, field", [
    (("role = \"client\"\ncapacity", "role = \"boss\"\ncapacity"), "hosts[3].role"),
    (("address = \"10.1.0.3\"", "address = \"not an address!\""), "hosts[2].address"),
    (("port = 2222", "port = 70000"), "hosts[1].port"),
    (("zone = \"z2\"", "zone = \"z2\"\nflavour = 1"), "hosts[1].flavour"),
    (("packs = 10", "packs = -1"), "hosts[3].capacity.packs"),
    (("install_dir = \"/srv/canidae\"", "install_dir = \"srv\""), "cluster.install_dir"),
    (("name = \"s3\"", "name = \"s1\""), "hosts[2].name"),
    (("name = \"s3\"\naddress = \"10.1.0.3\"\nrole = \"server\"", "name = \"s3\"\naddress = \"10.1.0.3\""), "hosts:"),
])
def test_a_bad_field_is_refused_by_name_with_exit_2(tmp_path, change, field):
    assert change[0] in GOOD
    p = write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_inventory(str(p))
    r = cli("fleet", "bootstrap", str(p), "--plan")
    assert r.returncode == 2, r.stderr
    assert field in r.stderr and r.stderr.count("\n") == 1 and r.stdout == ""
    assert not (tmp_path / ".lab.fleet").exists()  # nothing made


def test_plan_names_every_host_servers_first_and_connects_to_none(tmp_path):
    p = write(tmp_path, GOOD)
    r = cli("fleet", "bootstrap", str(p), "--plan", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["plan"]
    assert [x["host"] for x in rows] == ["s1", "s2", "s3", "c1"]
    assert rows[1]["ssh"] == "ops@10.1.0.2:2222" and rows[3]["raft"] == ""
    assert rows[0]["steps"][0] == "sudo"  # not root: sudo -n is checked first
    assert not (tmp_path / ".lab.fleet").exists()
    r = cli("fleet", "bootstrap", str(p), "--plan", "--limit", "c1,s2", "--json")
    assert [x["host"] for x in json.loads(r.stdout)["plan"]] == ["s2", "c1"]
    r = cli("fleet", "bootstrap", str(p), "--plan", "--limit", "nope")
    assert r.returncode == 2 and "'nope' is not a host" in r.stderr


def test_without_yes_and_without_a_terminal_nothing_is_changed(tmp_path):
    r = cli("fleet", "bootstrap", str(write(tmp_path, GOOD)))
    assert r.returncode == 2 and "pass --yes" in r.stderr
    assert not (tmp_path / ".lab.fleet").exists()


def test_limit_failed_picks_the_hosts_recorded_as_failed(tmp_path):
    inv = load_inventory(str(write(tmp_path, GOOD)))
    assert [h.name for h in select_hosts(inv, ["@failed"], ["c1", "s2"])] == ["s2", "c1"]
    assert select_hosts(inv, ["@failed"], []) == []
    assert len(select_hosts(inv, None, ["c1"])) == 4


def test_the_readme_inventory_example_is_valid(tmp_path):
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Bring up a fleet"):]
    example = section[section.index("```toml\n") + 8:section.index("```\n", section.index("```toml\n") + 8)]
    inv = load_inventory(str(write(tmp_path, example)))
    assert [(h.name, h.role.value, h.port) for h in inv.hosts] == [("s1", "server", 22), ("c1", "client", 2222)]
