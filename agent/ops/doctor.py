"""``canidae agent doctor``: can this host run its agent, and how will (or does) it isolate packs?

Each check answers ``{"check", "status": ok|warn|fail, "detail"}``. When the agent of the config
answers on its API, the isolation it chose at start is read from it (``/v1/exec/info``);
otherwise the choice is made here exactly as the agent would make it. Checks: isolation
mechanism, per-pack users, rlimits, the API and Raft ports, the data dir (exists, writable,
private, free space), the config file's mode, the clock (kernel sync state and skew against the
other servers), the peers (API and Raft reachable), and the protections packs run under:
privilege drop before the environment, NoNewPrivs and no capabilities, private /tmp with the data
dir hidden, ``--network none``, and the cluster's secret key file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import socket
import stat
import time
from typing import Any

import httpx
from canidae.agent import certs
from canidae.agent.client.tls import client_context
from canidae.agent.config import AgentConfig
from canidae.agent.node.confine import available as confinement_available
from canidae.agent.node.isolation import Isolation
from canidae.agent.secretbox import key_file

SKEW_WARN_MS = 250.0
SKEW_FAIL_MS = 2000.0
TIME_ERROR = 5  # adjtimex: the kernel clock is not synchronised


def _check(name: str, status: str, detail: str) -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail}


def _get(http: httpx.Client, api: str, path: str, scheme: str = "https") -> Any:
    r = http.get(f"{scheme}://{api}{path}")
    r.raise_for_status()
    return r.json()


def _port_free(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def _connects(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _kernel_clock_synced() -> bool | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex with modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != TIME_ERROR


def run_checks(cfg: AgentConfig, config_path: str) -> list[dict[str, str]]:
    checks: list[dict[str, str]] = _tls(cfg)
    if any(c["status"] == "fail" for c in checks):
        return checks  # no call can be checked without the files
    verify = True if cfg.peer_ca is None else client_context(cfg.peer_ca)
    with httpx.Client(timeout=2.0, headers={"authorization": f"Bearer {cfg.token}"}, verify=verify) as http:
        info = None
        try:
            h = _get(http, cfg.api, "/v1/health", cfg.scheme)
            if h.get("node") == cfg.node_id:
                info = _get(http, cfg.api, "/v1/exec/info", cfg.scheme)
        except (httpx.HTTPError, ValueError):
            pass
        checks += _isolation(cfg, info)
        checks += _limits()
        checks += _ports(cfg, info is not None)
        checks += _data_dir(cfg, config_path)
        checks += _clock_and_peers(cfg, http)
    return checks


def _tls(cfg: AgentConfig) -> list[dict[str, str]]:
    """The agent's TLS files: there, the key private, the certificate the CA's and for its address."""
    if cfg.insecure_http:
        return [_check("tls", "warn", "insecure_http: the API is plain HTTP (a throwaway loopback cluster only)")]
    try:
        with open(cfg.tls_ca, "rb") as f:
            ca_pem = f.read()
        with open(cfg.tls_cert, "rb") as f:
            cert_pem = f.read()
        key_mode = os.stat(cfg.tls_key).st_mode & 0o077
    except OSError as e:
        return [_check("tls", "fail", f"cannot read {e.filename}: {e.strerror}")]
    try:
        names = certs.subject_names(cert_pem)
        signed = certs.signed_by(cert_pem, certs.ClusterCA(ca_pem, b""))
    except ValueError as e:
        return [_check("tls", "fail", f"{cfg.tls_cert} or {cfg.tls_ca} is not a PEM certificate: {e}")]
    host = cfg.api.rpartition(":")[0].strip("[]")
    if not signed:
        return [_check("tls", "fail", f"{cfg.tls_cert} was not issued by the CA in {cfg.tls_ca}")]
    if host not in ("0.0.0.0", "::") and host not in names:
        return [_check("tls", "fail", f"the certificate is for {', '.join(names)}, not {host}: "
                                      f"the other agents will refuse it")]
    if key_mode:
        return [_check("tls", "fail", f"{cfg.tls_key} is readable by others (chmod 600 it)")]
    return [_check("tls", "ok", f"HTTPS with a certificate of the cluster CA for {', '.join(names)}")]


def _isolation(cfg: AgentConfig, info: dict[str, Any] | None) -> list[dict[str, str]]:
    if info is not None:
        ex = info["exec"]
        mech, detail, users = ex["mechanism"], f"chosen by the running agent: {ex['detail']}", ex["pack_users"]
    else:
        iso = Isolation.detect(cfg.node_id, cfg.data_dir)
        mech, detail = iso.mechanism, f"the agent would choose: {iso.detail}"
        iso.close()
        users = os.geteuid() == 0
    out = [_check("isolation", "ok" if mech != "rlimits" else "warn",
                  f"{mech} ({detail})" + ("; CPU is not limited and memory only per process" if mech == "rlimits"
                                          else ""))]
    out.append(_check("pack users", "ok" if users else "warn",
                      "each pack runs as a user of its own, a new one per run" if users else
                      "the agent is not root (or lacks setpriv): packs share its user and may signal each other"))
    given = info["exec"].get("confinement") if info is not None else None
    if given is None:  # the running agent predates these checks, or is not running: what this host can give
        root = os.geteuid() == 0 and users
        given = {k: v and (root or k == "no_new_privs") for k, v in confinement_available(root).items()}
    out += _confinement(given)
    return out


def _confinement(given: dict[str, bool]) -> list[dict[str, str]]:
    def row(name: str, ok: bool, yes: str, no: str) -> dict[str, str]:
        return _check(name, "ok" if ok else "warn", yes if ok else no)
    return [
        row("privilege drop", given.get("no_new_privs", False) and given.get("no_capabilities", False),
            "members run with NoNewPrivs and an empty capability bounding set; the spec's environment is "
            "applied only after the drop to the pack's user; loader variables (LD_*) are refused",
            "members lack NoNewPrivs or keep capabilities (needs root and setpriv from util-linux)"),
        row("private /tmp", given.get("private_tmp", False) and given.get("hidden_data_dir", False),
            "each member has its own /tmp, /var/tmp and /dev/shm, and sees none of the data dir but its "
            "working directory", "members share the host's /tmp and could see the data dir's paths "
            "(needs root, unshare and mount)"),
        row("network none", given.get("network_none", False),
            "packs asking for --network none get an empty network namespace",
            "packs asking for --network none cannot start here (needs root and unshare)"),
    ]


def _limits() -> list[dict[str, str]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = _check("open files", "ok" if soft >= 4096 else "warn",
                    f"RLIMIT_NOFILE {soft} (hard {hard})" + ("" if soft >= 4096 else
                                                             ": an agent with many packs wants >= 4096"))
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
    except (OSError, ValueError):
        pid_max = 0
    return [nofile, _check("processes", "ok" if pid_max >= 32768 else "warn", f"kernel.pid_max {pid_max}")]


def _ports(cfg: AgentConfig, agent_up: bool) -> list[dict[str, str]]:
    out = []
    for what, addr in (("api port", cfg.api), ("raft port", cfg.raft)):
        if not addr:
            continue
        if agent_up:
            out.append(_check(what, "ok", f"{addr} in use by this node's running agent"))
        elif _port_free(addr):
            out.append(_check(what, "ok", f"{addr} is free"))
        else:
            out.append(_check(what, "fail", f"{addr} is in use by another process"))
    return out


def _data_dir(cfg: AgentConfig, config_path: str) -> list[dict[str, str]]:
    out = []
    d = cfg.data_dir
    if not os.path.isdir(d):
        parent = os.path.dirname(os.path.abspath(d))
        ok = os.access(parent, os.W_OK)
        out.append(_check("data dir", "ok" if ok else "fail",
                          f"{d} does not exist yet; the agent " + ("will create it" if ok else "cannot create it")))
    else:
        st = os.stat(d)
        problems = []
        if not os.access(d, os.W_OK):
            problems.append("not writable")
        if st.st_uid != os.geteuid():
            problems.append(f"owned by uid {st.st_uid}, not {os.geteuid()}")
        if st.st_mode & 0o077:
            problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, not 0700 (packs must not read it)")
        free = os.statvfs(d)
        free_gib = free.f_bavail * free.f_frsize / 2**30
        status = "fail" if "not writable" in problems else "warn" if problems or free_gib < 1 else "ok"
        out.append(_check("data dir", status, f"{d}: " + (", ".join(problems) if problems else "ok") +
                          f"; {free_gib:.1f} GiB free"))
    keys = key_file(d)
    try:
        kmode = stat.S_IMODE(os.stat(keys).st_mode)
        out.append(_check("secret keys", "ok" if not kmode & 0o077 else "fail",
                          f"{keys} mode {kmode:04o}" + ("" if not kmode & 0o077 else ": make it 0600")))
    except OSError:
        out.append(_check("secret keys", "warn", f"no {keys}: packs with secrets cannot be created or started "
                                                 "through this agent (copy the cluster's file here)"))
    try:
        mode = stat.S_IMODE(os.stat(config_path).st_mode)
        out.append(_check("config file", "ok" if not mode & 0o077 else "warn",
                          f"{config_path} mode {mode:04o}" + ("" if not mode & 0o077 else
                                                               ": it holds the token, make it 0600")))
    except OSError:
        pass
    return out


def _clock_and_peers(cfg: AgentConfig, http: httpx.Client) -> list[dict[str, str]]:
    out = []
    synced = _kernel_clock_synced()
    out.append(_check("clock", "ok" if synced else "warn",
                      "the kernel clock is synchronised" if synced else
                      "the kernel reports an unsynchronised clock (run an NTP client)" if synced is False else
                      "the kernel's clock sync state is unknown"))
    for s in cfg.servers:
        if s.api == cfg.api:
            continue
        t0 = time.time() * 1000
        try:
            info = _get(http, s.api, "/v1/exec/info", cfg.scheme)
        except (httpx.HTTPError, ValueError) as e:
            out.append(_check(f"peer {s.id}", "fail", f"API {s.api} unreachable or refusing the token "
                                                     f"({type(e).__name__})"))
            continue
        t1 = time.time() * 1000
        skew = info["time_ms"] - (t0 + t1) / 2
        raft_ok = _connects(s.raft)
        out.append(_check(f"peer {s.id}", "ok" if raft_ok else "fail",
                          f"API {s.api} answers; Raft {s.raft} " + ("reachable" if raft_ok else "unreachable")))
        status = "ok" if abs(skew) < SKEW_WARN_MS else "warn" if abs(skew) < SKEW_FAIL_MS else "fail"
        out.append(_check(f"clock vs {s.id}", status, f"skew {skew:+.1f} ms (round trip {t1 - t0:.1f} ms)"))
    return out
