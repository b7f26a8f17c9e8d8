"""canidae.agent.server: the control plane of a server agent.

The HTTP routes, the pysyncobj replica and its group commit (proposer), the event store and the
history read from it, and the routing of yips and exec calls to the node that holds a pack. It
imports ``canidae.core``, ``canidae.agent.config`` and ``canidae.agent.client``, never the node
runtime or operator tooling.
"""
