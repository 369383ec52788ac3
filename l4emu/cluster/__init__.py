"""A cluster of switch instances behind ECMP, and the per-connection-consistency designs side by side.

Loaded only by `l4emu compare --cluster` and `--consistency` (start-up: tests/test_startup.py).
"""
