"""``crystal-rt cuda build|info``: warm the CUDA kernel cache, show NVRTC / cache / device facts."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ..console import console, err_console, shown
from ..cuda import binding, build
from ..errors import BackendUnavailable, CrystalRtError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cuda",
        help="compile the CUDA kernels into the cache (build) or show the CUDA setup (info)",
        description=__doc__,
    )
    csub = p.add_subparsers(dest="cuda_command", metavar="ACTION")
    b = csub.add_parser(
        "build",
        help="compile every kernel for this GPU or the given archs (warms the cache)",
        description="Compile kernels/*.cu with NVRTC into the user cache. Default: the current "
        "GPU's arch; without a GPU, name the targets with --arch.",
    )
    b.add_argument(
        "--arch",
        help="comma-separated targets, e.g. sm_75,sm_87 (compute_XX for PTX), or 'all' "
        "(sm_75, 80, 86, 87, 89, 90, 110, 120)",
    )
    b.add_argument("--kernel", action="append", help="only this kernel (file stem); repeatable")
    b.add_argument("--force", action="store_true", help="recompile even when cached")
    b.add_argument(
        "--show-resources", action="store_true", help="one row per kernel function (registers, spills, smem)"
    )
    b.set_defaults(run=run)
    i = csub.add_parser("info", help="NVRTC version, cache folder and the CUDA device, if any")
    i.set_defaults(run=run)
    p.set_defaults(run=run, cuda_command=None)


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "cuda_command", None)
    if command == "build":
        return _build(args)
    if command == "info":
        return _info()

    err_console.print("usage: crystal-rt cuda {build,info} (see crystal-rt cuda --help)", highlight=False)
    return 2


def _build(args: argparse.Namespace) -> int:
    if args.arch:
        archs = build.parse_arch_list(args.arch)
    else:
        try:
            archs = [build.device_arch()]
        except BackendUnavailable as exc:
            raise BackendUnavailable(
                f"no CUDA device to build for ({exc.message}); "
                "name the targets with --arch, e.g. --arch sm_87"
            ) from exc
    names = args.kernel or build.kernel_names()
    for name in names:
        build.kernel_path(name)  # unknown names fail before any compile
    results = []
    with err_console.status(f"compiling {len(names)} kernel file(s) for {', '.join(archs)} ..."):
        for arch in archs:
            for name in names:
                results.append(build.compile_kernel(name, arch, use_cache=not args.force))

    table = Table(title=f"CUDA kernels (cache: {shown(build.cache_dir())})", title_justify="left")
    table.add_column("kernel")
    table.add_column("arch")
    if args.show_resources:
        table.add_column("function")
        table.add_column("registers", justify="right")
        table.add_column("spills (st/ld B)", justify="right")
        table.add_column("smem B", justify="right")
    else:
        table.add_column("functions", justify="right")
        table.add_column("max registers", justify="right")
        table.add_column("spills", justify="right")
    table.add_column("cached")
    table.add_column("file", overflow="fold")
    for k in results:
        cached = "hit" if k.from_cache else "built"
        path = shown(k.cache_path.name) if k.cache_path else "(not cached)"
        if args.show_resources and k.resources:
            for r in k.resources:
                table.add_row(
                    k.name,
                    k.arch,
                    r.function,
                    str(r.registers),
                    f"{r.spill_stores}/{r.spill_loads}",
                    str(r.shared_bytes),
                    cached,
                    path,
                )
        elif args.show_resources:
            table.add_row(k.name, k.arch, "(PTX: no ptxas report)", "", "", "", cached, path)
        else:
            regs = max((r.registers for r in k.resources), default=0)
            spills = sum(r.spills for r in k.resources)
            table.add_row(
                k.name,
                k.arch,
                str(len(k.resources)),
                str(regs) if k.resources else "-",
                str(spills),
                cached,
                path,
            )
    console.print(table)
    spilled = [f"{k.name}/{r.function}@{k.arch}" for k in results for r in k.resources if r.spills]
    if spilled:
        err_console.print(f"[yellow]warning:[/] register spills in {', '.join(spilled)}", highlight=False)
    return 0


def _info() -> int:
    table = Table(show_header=False, title="CUDA", title_justify="left")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    try:
        major, minor = build.nvrtc_version()
        table.add_row("NVRTC", f"{major}.{minor}")
        table.add_row("NVRTC archs", ", ".join(build.supported_archs()))
    except CrystalRtError as exc:
        table.add_row("NVRTC", f"unavailable: {shown(exc.message)}")
    table.add_row("cache", shown(build.cache_dir()))
    table.add_row("kernels", ", ".join(build.kernel_names()))
    try:
        table.add_row("device", shown(_device_line()))
    except CrystalRtError as exc:
        table.add_row("device", f"none ({shown(exc.message)})")
    console.print(table)
    return 0


def _device_line(device: int = 0) -> str:
    arch = build.device_arch(device)  # raises BackendUnavailable without a driver or GPU
    driver = binding.driver("Querying the CUDA device")
    _, dev = driver.cuDeviceGet(device)
    _, raw = driver.cuDeviceGetName(256, dev)
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    _, version = driver.cuDriverGetVersion()
    _, total = driver.cuDeviceTotalMem(dev)
    cuda = f"{int(version) // 1000}.{int(version) % 1000 // 10}"
    return f"{name} ({arch}), {int(total) / 2**30:.1f} GiB, driver CUDA {cuda}"
