"""Giving freed memory back (transfers_plugin/memory.py): only after enough was noted, at most once per interval."""

from transfers_plugin.memory import MB, FreedMemory, glibc_malloc_trim


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_trims_after_the_threshold_at_most_once_per_interval():
    calls = []
    clock = Clock()
    freed = FreedMemory(threshold=10 * MB, interval=1.0, trim=lambda: calls.append(clock.now), clock=clock)
    assert not freed.maybe_release()  # nothing noted
    freed.note(9 * MB)
    assert not freed.maybe_release() and calls == []
    freed.note(1 * MB)
    assert freed.maybe_release() and calls == [100.0]
    freed.note(50 * MB)
    clock.now += 0.5
    assert not freed.maybe_release()  # too soon
    clock.now += 0.5
    assert freed.maybe_release() and calls == [100.0, 101.0]
    clock.now += 10
    assert not freed.maybe_release()  # nothing noted since
    assert freed.trims == 2


def test_a_transfer_start_trims_whatever_was_noted_but_not_more_often():
    calls = []
    clock = Clock()
    freed = FreedMemory(threshold=10 * MB, interval=1.0, trim=lambda: calls.append(clock.now), clock=clock)
    assert freed.maybe_release(start=True) and calls == [100.0]
    clock.now += 0.5
    assert not freed.maybe_release(start=True)  # 20 jobs at once: one trim
    clock.now += 0.5
    assert freed.maybe_release(start=True) and len(calls) == 2


def test_without_a_trim_function_nothing_happens():
    freed = FreedMemory(threshold=1, trim=None)
    freed.note(100 * MB)
    assert not freed.maybe_release() and freed.trims == 0


def test_glibc_trim_is_callable_here():
    trim = glibc_malloc_trim()
    assert trim is not None, "the test machines run glibc"
    assert trim() in (0, 1)
