"""Notes in a file, with nothing but Python's `open`: the worker's files are its own, kept
across crashes and moves by replaying its oplog, and a version may ship files of its own
(`/config/greeting.txt` here, uploaded with it as a tar archive).
"""

import wit_world

NOTES = "/notes.txt"


class WitWorld(wit_world.WitWorld):
    def add_note(self, text: str) -> int:
        with open(NOTES, "a", encoding="utf-8") as f:
            f.write(text.replace("\n", " ") + "\n")
        with open(NOTES, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def read_notes(self) -> str:
        try:
            with open(NOTES, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def greeting(self) -> str:
        with open("/config/greeting.txt", encoding="utf-8") as f:
            return f.read().strip()
