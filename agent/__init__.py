"""canidae.agent: everything that does I/O, in four rooms.

    server/   the control plane: routes, Raft replica, group commit, event store, yip routing
    node/     the node runtime: reconcile loop, drivers, isolation, logs, mailboxes
    client/   the typed client every caller outside an agent uses
    ops/      operator tooling: local clusters, drills, scale tests, doctor

``config`` (the agent's configuration file) is shared by all rooms; ``daemon`` is the agent
process's composition root, wiring a server (on servers) and the node runtime together.
"""
