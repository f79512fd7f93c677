"""The simulated GPU keeps the rules of the CUDA driver API and of TensorRT's Python API that host code
can break; each test breaks one on purpose and checks the stand-in catches it as the real one would."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from crystal_rt.testing import SimulatedGpu


def ok(result: tuple) -> object:
    code, *values = result
    assert int(code) == 0, code
    return values[0] if len(values) == 1 else tuple(values)


@pytest.fixture
def drv(sim_gpu: SimulatedGpu):
    d = sim_gpu.driver
    ok(d.cuInit(0))
    ctx = ok(d.cuDevicePrimaryCtxRetain(ok(d.cuDeviceGet(0))))
    ok(d.cuCtxSetCurrent(ctx))
    return d


def test_calls_need_init_and_a_current_context(sim_gpu: SimulatedGpu) -> None:
    import threading

    d = sim_gpu.driver
    assert d.cuMemAlloc(16)[0] == d.CUresult.CUDA_ERROR_NOT_INITIALIZED
    ok(d.cuInit(0))
    assert d.cuMemAlloc(16)[0] == d.CUresult.CUDA_ERROR_INVALID_CONTEXT
    ok(d.cuCtxSetCurrent(ok(d.cuDevicePrimaryCtxRetain(ok(d.cuDeviceGet(0))))))
    ptr = ok(d.cuMemAlloc(16))
    # the context is current on this thread only
    seen = []
    thread = threading.Thread(target=lambda: seen.append(d.cuMemAlloc(16)[0]))
    thread.start()
    thread.join()
    assert seen == [d.CUresult.CUDA_ERROR_INVALID_CONTEXT]
    ok(d.cuMemFree(ptr))
    assert d.cuMemFree(ptr)[0] == d.CUresult.CUDA_ERROR_INVALID_VALUE  # double free


def test_results_need_synchronisation(drv) -> None:
    """An async copy to page-locked memory lands when the stream is synchronised, not before."""
    stream = ok(drv.cuStreamCreate(int(drv.CUstream_flags.CU_STREAM_NON_BLOCKING)))
    dev = int(ok(drv.cuMemAlloc(64)))
    src = np.arange(64, dtype=np.uint8)
    ok(drv.cuMemcpyHtoDAsync(dev, src.ctypes.data, 64, stream))  # pageable: staged at the call
    src[:] = 0  # so changing it now cannot change what was copied
    pinned = ok(drv.cuMemHostAlloc(64, 0))
    host = np.ctypeslib.as_array((ctypes.c_uint8 * 64).from_address(pinned))
    host[:] = 255
    ok(drv.cuMemcpyDtoHAsync(pinned, dev, 64, stream))
    assert host[0] == 255 and host[63] == 255, "not there before the stream is synchronised"
    ok(drv.cuStreamSynchronize(stream))
    assert np.array_equal(host, np.arange(64, dtype=np.uint8))
    # to pageable memory the copy returns when it is done
    out = np.zeros(64, np.uint8)
    ok(drv.cuMemcpyDtoHAsync(out.ctypes.data, dev, 64, stream))
    assert np.array_equal(out, np.arange(64, dtype=np.uint8))
    ok(drv.cuMemFreeHost(pinned))
    ok(drv.cuMemFree(dev))
    ok(drv.cuStreamDestroy(stream))


def test_copies_must_stay_inside_allocations_and_memory_is_finite(drv, sim_gpu: SimulatedGpu) -> None:
    dev = int(ok(drv.cuMemAlloc(100)))
    host = np.zeros(200, np.uint8)
    assert drv.cuMemcpyHtoDAsync(dev, host.ctypes.data, 101, 0)[0] == drv.CUresult.CUDA_ERROR_INVALID_VALUE
    assert drv.cuMemcpyHtoDAsync(dev + 50, host.ctypes.data, 50, 0)[0] == drv.CUresult.CUDA_SUCCESS
    assert drv.cuMemAlloc(drv.memory_bytes)[0] == drv.CUresult.CUDA_ERROR_OUT_OF_MEMORY
    free, total = ok(drv.cuMemGetInfo())
    assert total == drv.memory_bytes and free == total - 100
    ok(drv.cuMemFree(dev))


def test_a_kernel_writing_past_its_buffer_is_an_illegal_address(drv, sim_gpu: SimulatedGpu) -> None:
    """The letterbox kernel told the output is bigger than its buffer: the guard bytes catch it, and
    the error is sticky for the context, as on a GPU."""
    from crystal_rt.cuda.launches import letterbox_launch
    from crystal_rt.cuda.module import Module
    from crystal_rt.spec import PreprocessSpec

    spec = PreprocessSpec.paper(input_size=64, clahe=False)
    module = Module("letterbox")
    src = int(ok(drv.cuMemAlloc(32 * 32)))
    out = int(ok(drv.cuMemAlloc(3 * 64 * 64 * 4 - 4)))  # one float short
    launch, _ = letterbox_launch(src, 32, 32, 32, 1, np.uint8, spec, out)
    module.launch(launch)  # the legacy stream runs it at once
    assert drv.cuCtxSynchronize()[0] == drv.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
    assert drv.cuMemAlloc(16)[0] == drv.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
    assert "wrote past the end" in drv.messages[-1]


def test_kernel_pointers_must_be_device_memory(drv) -> None:
    from crystal_rt.cuda.launches import letterbox_launch
    from crystal_rt.cuda.module import Module
    from crystal_rt.errors import CudaError
    from crystal_rt.spec import PreprocessSpec

    module = Module("letterbox")
    host = np.zeros((32, 32), np.uint8)  # a host array passed where device memory belongs
    out = int(ok(drv.cuMemAlloc(3 * 64 * 64 * 4)))
    spec = PreprocessSpec.paper(input_size=64)
    launch, _ = letterbox_launch(host.ctypes.data, 32, 32, 32, 1, np.uint8, spec, out)
    with pytest.raises(CudaError, match="ILLEGAL_ADDRESS"):
        module.launch(launch)
    assert "neither device nor page-locked host memory" in drv.messages[-1]


def test_launch_limits(drv) -> None:
    from crystal_rt.cuda.launches import PASTE_ARGTYPES, KernelLaunch
    from crystal_rt.cuda.module import Module
    from crystal_rt.errors import CudaError

    module = Module("paste")
    too_big = KernelLaunch("crt_paste_masks", (1, 1, 1), (2048, 1, 1), (0, 28, 0, 0, 0, 0, 0), PASTE_ARGTYPES)
    with pytest.raises(CudaError, match="INVALID_VALUE"):
        module.launch(too_big)
    assert "bad launch" in drv.messages[-1]


def test_events_time_the_stream(drv) -> None:
    from crystal_rt.cuda.timing import EventTimer

    stream = ok(drv.cuStreamCreate(1))
    timer = EventTimer(stream)
    timer.start("copy")
    dev = int(ok(drv.cuMemAlloc(1 << 20)))
    host = np.ones(1 << 20, np.uint8)
    ok(drv.cuMemcpyHtoDAsync(dev, host.ctypes.data, host.nbytes, stream))
    timer.stop()
    elapsed = timer.elapsed()  # waits for the events
    assert set(elapsed) == {"copy"} and elapsed["copy"] >= 0.0
    timer.close()
    ok(drv.cuMemFree(dev))
    ok(drv.cuStreamDestroy(stream))


def test_modules_are_crystal_rt_kernels_only(drv) -> None:
    assert drv.cuModuleLoadData(b"\x7fELF not a kernel of ours")[0] == drv.CUresult.CUDA_ERROR_INVALID_IMAGE
    from crystal_rt.cuda.module import Module

    module = Module("clahe")
    assert drv.cuModuleGetFunction(module.handle, b"no_such_kernel")[0] == drv.CUresult.CUDA_ERROR_NOT_FOUND
    module.close()


# ---- TensorRT ---------------------------------------------------------------------------------------


def test_tensorrt_rules(sim_gpu: SimulatedGpu, demo_trt_engine: Path) -> None:
    from crystal_rt.cuda.driver import ensure_context
    from crystal_rt.cuda.memory import DeviceBuffer

    trt = sim_gpu.tensorrt
    assert trt is not None
    ensure_context()
    logger = trt.Logger()
    messages: list[str] = []
    logger.log = lambda severity, msg: messages.append(msg)  # type: ignore[method-assign]
    plan = (demo_trt_engine / "crystals.plan").read_bytes()
    runtime = trt.Runtime(logger)
    assert runtime.deserialize_cuda_engine(plan) is None  # ROIAlign_TRT is not registered yet
    assert "IPluginCreator not found" in messages[0]
    assert trt.init_libnvinfer_plugins(logger, "")
    engine = runtime.deserialize_cuda_engine(plan)
    assert engine is not None
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert names == ["images", "boxes", "scores", "labels", "masks"]
    assert engine.get_tensor_mode("images") == trt.TensorIOMode.INPUT
    assert trt.nptype(engine.get_tensor_dtype("labels")) == np.int64
    assert tuple(engine.get_tensor_shape("masks"))[1:] == (28, 28)
    context = engine.create_execution_context()
    buffers = {}
    for name in names[:-1]:  # every tensor but masks gets an address
        itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
        nbytes = int(np.prod(engine.get_tensor_shape(name))) * itemsize
        buffers[name] = DeviceBuffer(nbytes)
        assert context.set_tensor_address(name, buffers[name].ptr) is True
    assert context.execute_async_v3(0) is False
    assert "Address is not set for output tensor masks" in messages[-1]
    for buf in buffers.values():
        buf.free()
    assert runtime.deserialize_cuda_engine(b"garbage") is None


def test_other_version_or_device_plans_are_refused(demo_trt_engine: Path) -> None:
    plan = (demo_trt_engine / "crystals.plan").read_bytes()
    assert "not compatible with this version of TensorRT" in messages_of(plan, tensorrt_version="10.17.0.sim")
    other_gpu = messages_of(plan, compute_capability="8.6")
    assert "incompatible device, expecting compute 8.6 got compute 8.9" in other_gpu


def messages_of(plan: bytes, **gpu: str) -> str:
    """What the simulated TensorRT logs deserializing ``plan`` on a GPU/TensorRT configured by ``gpu``."""
    from crystal_rt.testing import simulated_gpu

    with simulated_gpu(**gpu) as sim:  # type: ignore[arg-type]
        trt = sim.tensorrt
        assert trt is not None
        logger = trt.Logger()
        messages: list[str] = []
        logger.log = lambda severity, msg: messages.append(msg)  # type: ignore[method-assign]
        trt.init_libnvinfer_plugins(logger, "")
        assert trt.Runtime(logger).deserialize_cuda_engine(plan) is None
    return " | ".join(messages)


def test_allocations_and_tensor_addresses_are_256_byte_aligned(
    sim_gpu: SimulatedGpu, demo_trt_engine: Path
) -> None:
    """cuMemAlloc's memory is 256-byte aligned; TensorRT refuses a tensor address that is not
    ("The pointer must have at least 256-byte alignment")."""
    from crystal_rt.cuda.driver import ensure_context
    from crystal_rt.cuda.memory import DeviceBuffer

    trt = sim_gpu.tensorrt
    assert trt is not None
    ensure_context()
    buffers = [DeviceBuffer(n) for n in (1, 17, 4096, 3 * 512 * 512 * 4)]
    assert all(b.ptr % 256 == 0 for b in buffers)
    messages: list[str] = []
    logger = trt.Logger()
    logger.log = lambda severity, msg: messages.append(msg)  # type: ignore[method-assign]
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine((demo_trt_engine / "crystals.plan").read_bytes())
    context = engine.create_execution_context()
    assert context.set_tensor_address("images", buffers[-1].ptr) is True
    assert context.set_tensor_address("images", buffers[-1].ptr + 4) is False  # planted: an offset
    assert "not 256-byte aligned" in messages[-1]
    for b in buffers:
        b.free()


def test_tensorrt_objects_belong_to_their_context(sim_gpu: SimulatedGpu, demo_trt_engine: Path) -> None:
    """A runtime, engine or execution context used under another CUDA context than the one it was
    made in, or after its primary context was released to 0 (and made again), fails, as on a GPU."""
    d = sim_gpu.driver
    trt = sim_gpu.tensorrt
    assert trt is not None
    ok(d.cuInit(0))
    dev = ok(d.cuDeviceGet(0))
    primary = ok(d.cuDevicePrimaryCtxRetain(dev))
    ok(d.cuCtxSetCurrent(primary))
    messages: list[str] = []
    logger = trt.Logger()
    logger.log = lambda severity, msg: messages.append(msg)  # type: ignore[method-assign]
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine((demo_trt_engine / "crystals.plan").read_bytes())
    assert engine is not None and engine.create_execution_context() is not None
    own = ok(d.cuCtxCreate(0, dev))  # e.g. pycuda.autoinit's context made current
    assert engine.create_execution_context() is None and "another CUDA context" in messages[-1]
    ok(d.cuCtxDestroy(own))
    ok(d.cuCtxSetCurrent(primary))
    assert engine.create_execution_context() is not None
    ok(d.cuDevicePrimaryCtxRelease(dev))  # destroyed: still current here, but gone
    assert d.cuMemAlloc(16)[0] == d.CUresult.CUDA_ERROR_CONTEXT_IS_DESTROYED
    ok(d.cuDevicePrimaryCtxRetain(dev))  # a new primary context
    ok(d.cuMemFree(ok(d.cuMemAlloc(16))))
    assert engine.create_execution_context() is None and "context it was created in is gone" in messages[-1]
    assert runtime.deserialize_cuda_engine(b"x") is None and "gone" in messages[-1]


def test_shared_memory_counts_static_and_dynamic(drv) -> None:
    """Without opting in, a block has 48 KiB of shared memory, static (__shared__ arrays, read from the
    CUBIN) and dynamic together; MAX_DYNAMIC_SHARED_SIZE_BYTES opts in up to the arch's limit."""
    from crystal_rt.cuda.launches import KernelLaunch
    from crystal_rt.cuda.module import Module, launch

    module = Module("clahe", arch="sm_89")
    function = module.function("clahe_hist_lut_u8")
    attrs = drv.CUfunction_attribute
    static = ok(drv.cuFuncGetAttribute(attrs.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, function))
    assert static == 8208  # the histogram scan buffer and a counter
    dynamic = 48 * 1024 - static + 64  # under 48 KiB alone, over it with the static part
    code = drv.cuLaunchKernel(function, 1, 1, 1, 256, 1, 1, dynamic, 0, 1, 0)[0]
    assert code == drv.CUresult.CUDA_ERROR_INVALID_VALUE and "+ 8208 static" in drv.messages[-1]
    too_much = drv.cuFuncSetAttribute(
        function, attrs.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 99 * 1024
    )
    assert too_much[0] == drv.CUresult.CUDA_ERROR_INVALID_VALUE  # compute 8.9: 99 KiB a block in all
    # crystal-rt's launcher opts in when static + dynamic passes 48 KiB (the launch itself is made to fail
    # after the check, so that the kernel never runs on these made-up arguments)
    drv.fail_next("cuLaunchKernel", drv.CUresult.CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)
    spec = KernelLaunch("clahe_hist_lut_u8", (1, 1, 1), (256, 1, 1), (), (), dynamic)
    with pytest.raises(Exception, match="OUT_OF_RESOURCES"):
        launch(function, spec)
    opted = ok(drv.cuFuncGetAttribute(attrs.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, function))
    assert opted == dynamic
