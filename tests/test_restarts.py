"""When a dead worker is started again (party/pool/restarts.py): at once after a stable run, after
a delay that doubles while it keeps dying young, up to a cap."""

from party.pool.restarts import MAX_RESTART_DELAY, STABLE_AFTER, Restarts


def test_a_worker_that_dies_after_a_stable_run_restarts_at_once():
    restarts = Restarts(2)
    assert restarts.after_death(1, lived=STABLE_AFTER + 1, young_counts=True, now=100.0) == 0
    assert restarts.due(100.0) == [1]
    assert not restarts


def test_dying_young_again_and_again_doubles_the_delay_up_to_the_cap():
    restarts = Restarts(1)
    delays = [restarts.after_death(0, lived=0.1, young_counts=True, now=0.0) for _ in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == MAX_RESTART_DELAY and max(delays) == MAX_RESTART_DELAY


def test_a_stable_run_resets_the_delay():
    restarts = Restarts(1)
    for _ in range(3):
        restarts.after_death(0, lived=0.1, young_counts=True, now=0.0)
    assert restarts.after_death(0, lived=60.0, young_counts=True, now=0.0) == 0
    assert restarts.after_death(0, lived=0.1, young_counts=True, now=0.0) == 0.1


def test_a_death_that_says_nothing_about_the_start_never_delays():
    restarts = Restarts(1)
    assert restarts.after_death(0, lived=0.1, young_counts=False, now=0.0) == 0


def test_only_due_restarts_are_taken_and_the_soonest_is_known():
    restarts = Restarts(3)
    restarts.after_death(0, lived=0.1, young_counts=True, now=10.0)  # due at 10.1
    restarts.after_death(2, lived=99.0, young_counts=True, now=10.0)  # due at 10.0
    assert restarts.soonest() == 10.0
    assert restarts.due(10.05) == [2]
    assert restarts.soonest() == 10.1
    assert restarts.due(10.2) == [0]
    assert restarts.soonest() == float("inf")
    restarts.after_death(1, lived=0.1, young_counts=True, now=0.0)
    restarts.clear()
    assert not restarts and restarts.due(1e9) == []
