"""trtexec-like build options, validated once and stored in manifests by name (never enum integers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InvalidOption

HARDWARE_COMPAT = ("none", "ampere+", "same-cc")
#: --hardware-compat name -> ``trt.HardwareCompatibilityLevel`` member name
HARDWARE_COMPAT_LEVELS = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
OPT_LEVELS = range(0, 6)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes from ``"4G"``, ``"512M"``, ``"1.5GiB"`` or a plain number of bytes (binary units)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(text)
        if match is None:
            raise InvalidOption(f"cannot read the size {text!r}; write e.g. 512M or 4G")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise InvalidOption(f"the workspace must be more than 0 bytes, got {text!r}")
    return value


@dataclass(frozen=True)
class BuildOptions:
    """What ``trtexec`` would call --memPoolSize=workspace, --timingCacheFile, --builderOptimizationLevel,
    --hardwareCompatibilityLevel, --versionCompatible and --refit."""

    workspace: int | None = None  # bytes; None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None
    opt_level: int | None = None  # 0..5; None: TensorRT's default (3)
    hardware_compat: str = "none"
    version_compatible: bool = False
    refit: bool = False

    def __post_init__(self) -> None:
        if self.workspace is not None and self.workspace <= 0:
            raise InvalidOption(f"the workspace must be more than 0 bytes, got {self.workspace}")
        if self.opt_level is not None and self.opt_level not in OPT_LEVELS:
            raise InvalidOption(f"the builder optimization level is 0..5, got {self.opt_level}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise InvalidOption(
                f"unknown hardware compatibility {self.hardware_compat!r}; choose one of "
                f"{', '.join(HARDWARE_COMPAT)}"
            )

    @classmethod
    def from_args(
        cls,
        *,
        workspace: str | int | None = None,
        timing_cache: str | Path | None = None,
        opt_level: int | None = None,
        hardware_compat: str | None = None,
        version_compatible: bool = False,
        refit: bool = False,
    ) -> BuildOptions:
        return cls(
            workspace=None if workspace is None else parse_size(workspace),
            timing_cache=None if timing_cache is None else Path(timing_cache),
            opt_level=opt_level,
            hardware_compat=hardware_compat or "none",
            version_compatible=bool(version_compatible),
            refit=bool(refit),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BuildOptions:
        """From :meth:`to_dict`'s output or a plain options mapping (as ``build_engine`` receives)."""
        data = dict(data or {})
        known = {"workspace", "timing_cache", "opt_level", "hardware_compat", "version_compatible", "refit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOption(f"unknown TensorRT build option(s): {', '.join(unknown)}")
        return cls.from_args(**data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, by name; the key of the engine cache leaves out the timing-cache path."""
        return {
            "workspace": self.workspace,
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "opt_level": self.opt_level,
            "hardware_compat": self.hardware_compat,
            "version_compatible": self.version_compatible,
            "refit": self.refit,
        }

    def cache_key_dict(self) -> dict[str, Any]:
        """The options that change the plan (the timing cache only speeds the build up)."""
        data = self.to_dict()
        del data["timing_cache"]
        return data
