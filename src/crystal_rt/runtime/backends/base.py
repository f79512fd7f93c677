"""The interface every backend implements: the core graph's four fixed-size outputs, and, for a
backend whose tensors live on a device, the device implementations of the pipeline's stages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ...geometry import InputMap, Window
    from ...results.detection import InstanceMask
    from ...spec import PreprocessSpec
    from ..postprocess import Kept


class CoreOutputs(NamedTuple):
    boxes: np.ndarray  # float32 [K, 4], network-input pixels
    scores: np.ndarray  # float32 [K], 0 for padding
    labels: np.ndarray  # int64 [K]
    masks: np.ndarray  # float32 [K, 28, 28] probabilities


class DeviceSession(ABC):
    """One thread's device stages on one stream (see :mod:`crystal_rt.runtime.pipeline`).

    The pipeline calls, per image: ``begin``; ``clahe`` (raw image to the device, CLAHE there) or
    nothing (the CPU ran it); ``letterbox`` (the image, uploaded first when given, letterboxed or
    stretched and normalised into the engine's input) - or, for a recipe the kernels do not compute,
    ``set_input`` (the engine input the CPU made); ``run_engine`` (the engine, then the boxes, scores and
    labels back to the host); ``paste`` (the kept detections' masks pasted on the device, crops
    back); ``timings``.
    Each method brackets its own device work with CUDA events: ``timings()`` gives device time per
    stage in ms, read after the last synchronising call.
    """

    device: str = "cuda:0"

    @abstractmethod
    def can_clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> bool:
        """Whether the device has a CLAHE kernel for this kind of image (else the CPU runs that stage)."""

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def clahe(self, pixels: np.ndarray, spec: PreprocessSpec) -> None: ...

    @abstractmethod
    def letterbox(
        self, pixels: np.ndarray | None, spec: PreprocessSpec, window: Window | None = None
    ) -> InputMap:
        """Letterbox (or stretch) + normalise into the engine input: ``pixels`` (uploaded first), or
        the image already on the device (the ``clahe`` stage's, or the last upload: None), or its
        ``window`` (tiled inference). Returns the map back to the image (or window)."""

    @abstractmethod
    def set_input(self, tensor: np.ndarray) -> None:
        """Upload an engine input the CPU made (float32 [1, 3, H, W])."""

    @abstractmethod
    def run_engine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the engine on its input; (boxes, scores, labels) on the host (synchronises)."""

    @abstractmethod
    def paste(self, kept: Sequence[Kept], height: int, width: int) -> list[InstanceMask]:
        """The kept detections' masks pasted on the device (synchronises)."""

    @abstractmethod
    def timings(self) -> dict[str, float]: ...


class Backend(ABC):
    """Runs the core graph on a preprocessed [1, 3, H, W] float32 batch."""

    name: str = "backend"
    #: where the engine runs ("cpu", "cuda:0", ...)
    device: str = "cpu"

    @abstractmethod
    def infer(self, images: np.ndarray) -> CoreOutputs: ...

    def device_session(self) -> DeviceSession | None:
        """This thread's device stages, for a backend whose engine runs on a device (else None)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, contexts and device memory."""
