"""`python -m l4emu.cli`: the same command as `l4emu`."""

from l4emu.cli import main

main()
