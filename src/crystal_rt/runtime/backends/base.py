"""The interface every backend implements: the core graph's four fixed-size outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np


class CoreOutputs(NamedTuple):
    boxes: np.ndarray  # float32 [K, 4], network-input pixels
    scores: np.ndarray  # float32 [K], 0 for padding
    labels: np.ndarray  # int64 [K]
    masks: np.ndarray  # float32 [K, 28, 28] probabilities


class Backend(ABC):
    """Runs the core graph on a preprocessed [1, 3, S, S] float32 batch."""

    name: str = "backend"

    @abstractmethod
    def infer(self, images: np.ndarray) -> CoreOutputs: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, contexts and device memory."""
