"""A handler whose result no store can keep (PRODUCT.md: the task fails at once, no retry)."""

from party import TaskBase

RESULTS = {
    "surrogate": lambda: {"text": "\ud800"},
    "huge_int": lambda: 1 << 64,
    "dollar_key": lambda: {"ok": [{"$where": 1}]},
    "too_big": lambda: "x" * (16 * 1024 * 1024),
}


class UnstorableResult(TaskBase):
    max_attempts = 6

    def run(self):
        return RESULTS[self.data["kind"]]()
