"""canidae.agent: everything that does I/O.

The daemon, the pysyncobj replica, the HTTP API, drivers, isolation, mailboxes, the event store
on disk, and the typed HTTP client the CLI uses. Decisions are asked of ``canidae.core``.
"""
