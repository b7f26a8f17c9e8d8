"""canidae.cli: the ``canidae`` command (typer), one module per noun, rendering with rich.

The CLI talks to agents only through ``canidae.agent.client``; it never imports server code.
"""
