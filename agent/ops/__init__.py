"""canidae.agent.ops: operator tooling run from the command line.

Local clusters (the one handle tests, benchmarks, drills and scale tests use), drills, scale
tests and the agent doctor. It drives agents as separate processes through
``canidae.agent.client``; it never imports the control plane.
"""
