"""Stage timing: wall time charged to the pipeline's stages as it runs, and the progress bar.

A stage may open inside another (re-planning inside the shrink loop is search time, timing
candidates inside it is latency time): the inner stage is charged, the outer one paused, so
every second lands in exactly one stage and the stages add up to the whole call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tqdm.auto import tqdm


class StageTimer:
    """Seconds per stage (`seconds`), with one progress-bar step per top-level stage finished; the
    bar names the stage that is running."""

    def __init__(self, stages: Sequence[str], progress: bool = False, desc: str = "dissimilate") -> None:
        self.seconds: dict[str, float] = {stage: 0.0 for stage in stages}
        self._open: list[str] = []
        self._since = time.perf_counter()
        self._bar = tqdm(total=len(stages), desc=desc, disable=not progress, leave=False)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Charge the time spent inside the `with` block to `stage`."""
        if stage not in self.seconds:
            raise KeyError(f"stage {stage!r} is not one of {list(self.seconds)}")
        self._charge()
        if not self._open:
            self._bar.set_postfix_str(stage)  # the stage running now
        self._open.append(stage)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()
            if not self._open:
                self._bar.update()

    def close(self) -> dict[str, float]:
        """End the progress bar; the seconds per stage, the running one's charged up to now."""
        self._charge()
        self._bar.close()
        return dict(self.seconds)

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._since
        self._since = now
