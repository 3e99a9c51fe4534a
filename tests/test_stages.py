"""The stage timer: every second charged to exactly one stage, nested stages pausing the outer."""

import pytest

import lwdna_plugin.stages as stages
from lwdna_plugin.stages import StageTimer


class Clock:
    """A clock that advances only when told to, so the accounting is exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_nested_stage_is_charged_and_outer_paused(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(stages.time, "perf_counter", clock)
    timer = StageTimer(["shrink", "search"])
    clock.now += 7  # before any stage: charged to none
    with timer("shrink"):
        clock.now += 2
        with timer("search"):
            clock.now += 3
        clock.now += 1
    clock.now += 5
    with timer("search"):
        clock.now += 0.5
    assert timer.close() == {"shrink": 3.0, "search": 3.5}


def test_unknown_stage_is_refused():
    timer = StageTimer(["graph"])
    with pytest.raises(KeyError, match="'widen' is not one of \\['graph'\\]"):
        with timer("widen"):
            pass


def test_dissimilate_timings_cover_every_stage(resnet18_result):
    assert list(resnet18_result.timings) == ["graph", "widen", "score", "search", "shrink", "verify"]
    assert all(seconds > 0 for seconds in resnet18_result.timings.values())


def test_the_progress_bar_names_the_running_stage(capsys):
    timer = StageTimer(["graph", "score"], progress=True)
    with timer("graph"):
        pass
    with timer("score"):
        running = capsys.readouterr().err
    timer.close()
    assert running.rstrip().endswith("score]") or "score]" in running.split("\r")[-1]
