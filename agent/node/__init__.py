"""canidae.agent.node: the node runtime every agent runs.

The reconcile loop that makes this node run what the cluster assigns to it, the drivers
(virtual, exec), isolation (cgroups, rlimits, users), member logs and the mailboxes of the packs
placed here. It imports ``canidae.core``, ``canidae.agent.config`` and ``canidae.agent.client``,
never the control plane or operator tooling.
"""
