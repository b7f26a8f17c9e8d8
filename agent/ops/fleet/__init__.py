"""Fleet bootstrap: from an inventory of SSH hosts to a running cluster.

``inventory`` reads and checks the inventory file and plans each host's agent config (pure, no
I/O beyond reading the file); ``wheelhouse`` builds the wheels the hosts install from;
``sshlink`` is the one SSH connection of a host (asyncssh, host keys checked); ``remote`` holds
what runs on a host (probe, install, start, stop); ``bootstrap`` orders the hosts and records
the outcome of a run. Only ``sshlink`` and ``bootstrap`` import asyncssh, so that the command
line starts without it.
"""
