from party.runner import execute


def test_added_task_is_claimed_run_and_completed(queue):
    (task,) = queue.add([{"party": "Noop", "data": {"return": 7}}])
    (claimed,) = queue.claim(10)
    assert claimed.id == task.id and claimed.attempts == 1
    outcome, status = execute(queue, claimed)
    assert status == "completed"
    assert queue.get(task.id).result == 7
