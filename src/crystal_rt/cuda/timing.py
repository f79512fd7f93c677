"""CUDA events bracketing named stages on one stream: device time per stage."""

from __future__ import annotations

from typing import Any

from .driver import as_stream, check, driver


class EventTimer:
    """CUDA events bracketing named stages on one stream; ``elapsed()`` after the stream is synchronised."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._events: list[Any] = []  # reused between images
        self._marks: list[tuple[str, Any, Any]] = []

    def reset(self) -> None:
        self._marks = []

    def _event(self, index: int) -> Any:
        while len(self._events) <= index:
            drv = driver()
            self._events.append(check(drv.cuEventCreate(drv.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate"))
        return self._events[index]

    def start(self, stage: str) -> None:
        index = 2 * len(self._marks)
        begin, end = self._event(index), self._event(index + 1)
        drv = driver()
        check(drv.cuEventRecord(begin, drv.CUstream(as_stream(self.stream))), "cuEventRecord")
        self._marks.append((stage, begin, end))

    def stop(self) -> None:
        drv = driver()
        _, _, end = self._marks[-1]
        check(drv.cuEventRecord(end, drv.CUstream(as_stream(self.stream))), "cuEventRecord")

    def elapsed(self) -> dict[str, float]:
        """Milliseconds per stage (summed where a stage was timed more than once)."""
        drv = driver()
        out: dict[str, float] = {}
        for stage, begin, end in self._marks:
            check(drv.cuEventSynchronize(end), "cuEventSynchronize")
            ms = float(check(drv.cuEventElapsedTime(begin, end), "cuEventElapsedTime"))
            out[stage] = out.get(stage, 0.0) + ms
        return out

    def close(self) -> None:
        drv = driver()
        for event in self._events:
            drv.cuEventDestroy(event)
        self._events, self._marks = [], []
