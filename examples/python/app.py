"""The examples' counter in Python, built into a component by componentize-py.

Its state is a module global: Invicta keeps it across crashes and moves by replaying the
worker's oplog, with nothing Invicta-specific in the code.
"""

import wit_world

TOTAL = 0


class WitWorld(wit_world.WitWorld):
    def add(self, delta: int) -> int:
        global TOTAL
        TOTAL += delta
        return TOTAL

    def get(self) -> int:
        return TOTAL
