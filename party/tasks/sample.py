"""The seeds' example handlers, in Python 3: a one-off task and two recurring ones."""

from datetime import timedelta

from party import TaskBase


class SampleTask(TaskBase):
    """Prints its argument and where it is in its life."""

    def run(self):
        print(self.data.get("arg1"))
        print(
            "Attempting run %s of Task: %s which was scheduled on %s."  # noqa: UP031 (the seeds')
            % (self.attempts, self._id, self.timestamp)
        )


class RecurringTask(TaskBase):
    """Runs every 30 minutes."""

    is_recurring = True

    def run(self):
        pass  # Perform something

    def on_complete(self, tasks):
        self.schedule_next_run(minutes=30)


class RecurringTask2(TaskBase):
    """Runs every 30 days."""

    is_recurring = True

    def run(self):
        pass  # Perform something

    def on_complete(self, tasks):
        self.schedule_next_run(timestamp=self.timestamp + timedelta(days=30))
