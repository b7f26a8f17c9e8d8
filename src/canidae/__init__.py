"""canidae: a control plane for placing and running isolated workloads (packs) on a fleet.

The distribution holds three packages: ``canidae.core`` (pure, deterministic decisions),
``canidae.agent`` (all I/O: the daemon, Raft replica, HTTP API and client) and ``canidae.cli``
(the ``canidae`` command).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
