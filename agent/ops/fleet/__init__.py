"""The fleet: from an inventory of SSH hosts to a running cluster, and its later life.

``inventory`` reads and checks the inventory file and plans each host's agent config (pure, no
I/O beyond reading the file); ``wheelhouse`` builds the wheels the hosts install from;
``sshlink`` is the one SSH connection of a host (asyncssh, host keys checked); ``sudo`` holds the
run's one sudo password; ``remote`` holds what runs on a host (probe, install, start, stop,
uninstall); ``bootstrap`` brings hosts to a config and records the outcome of a run; ``upgrade``
rolls a new canidae over the hosts with the cluster up; ``removal`` takes a client out for good.
Only ``sshlink`` and the runners import asyncssh, so that the command line starts without it.
"""
