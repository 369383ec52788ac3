"""An example scheduler plugin in plain Python: each new flow goes to the real that waited longest.

Install it beside l4emu (`pip install ./examples`) and name it in a config: scheduler = "least_recent".
The `l4emu.schedulers` entry point in examples/pyproject.toml is what makes the name known.
"""
from l4emu.schedulers import PythonScheduler


class LeastRecent(PythonScheduler):
    """least_recent: the available real whose last new flow is the oldest (never picked counts as
    oldest; config order breaks ties), so a real back from down or drain is served first."""

    name = "least_recent"

    def __init__(self):
        super().__init__()
        self.picks = 0
        self.last_pick: dict[int, int] = {}     # real index -> number of the pick that chose it

    def pick(self, flow, reals):
        candidates = [i for i, real in enumerate(reals) if real["available"]]
        if not candidates:
            return None
        choice = min(candidates, key=lambda i: (self.last_pick.get(i, -1), i))
        self.picks += 1
        self.last_pick[choice] = self.picks
        return choice
