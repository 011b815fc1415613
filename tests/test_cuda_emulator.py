"""The CPU emulator that runs kernels/*.cu in the kernel tests: its CUDA built-ins behave as CUDA
defines them, and it refuses launches that would misbehave on a GPU. Expected values are computed
here from the definitions (thread and block numbering, sums), not taken from the emulator."""

import cuda_emulator
import numpy as np
import pytest

pytestmark = cuda_emulator.needs_compiler

PROBES = r"""
// Each thread writes its global linear id at its own slot, with its coordinates beside it.
extern "C" __global__ void where_am_i(long long* out) {
    const long long block =
        blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    const long long thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const long long threads = (long long)blockDim.x * blockDim.y * blockDim.z;
    long long* slot = out + 4 * (block * threads + thread);
    slot[0] = blockIdx.x + 1000 * blockIdx.y + 1000000 * blockIdx.z;
    slot[1] = threadIdx.x + 1000 * threadIdx.y + 1000000 * threadIdx.z;
    slot[2] = gridDim.x + 1000 * gridDim.y + 1000000 * gridDim.z;
    slot[3] = blockDim.x + 1000 * blockDim.y + 1000000 * blockDim.z;
}

// Butterfly sum across each warp: every lane ends with its warp's total.
extern "C" __global__ void warp_sums(const double* in, double* out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    double v = in[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[i] = v;
}

// Block sum through shared memory: thread 0 writes the block's total after the barrier.
extern "C" __global__ void block_sums(const float* in, float* out, int n) {
    __shared__ float partial[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? in[i] : 0.0f;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void shuffle_after_exit(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Records the order the threads run in (fibers never run at once, so the counter needs no atomic).
extern "C" __global__ void arrival_order(int* order) {
    order[order[64]++] = threadIdx.x;
}

// Thread 0 of each block reads a shared slot that only block 0 writes.
extern "C" __global__ void stale_shared(float* out, int* index_out) {
    __shared__ float value;
    __shared__ int index;
    if (blockIdx.x == 0) {
        value = 1.0f;
        index = 7;
    }
    out[blockIdx.x] = value;
    index_out[blockIdx.x] = index;
}

// Element i + shift, read or written: a shift of 1 or -1 reaches one element outside the buffer.
extern "C" __global__ void shifted_read(const float* in, float* out, int shift) {
    out[threadIdx.x] = in[(int)threadIdx.x + shift];
}

extern "C" __global__ void shifted_write(float* out, int shift) {
    out[(int)threadIdx.x + shift] = 2.0f;
}

extern "C" __global__ void scale(float* x, float by, long long n) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) x[i] *= by;
}
"""


@pytest.fixture(scope="module")
def module():
    return cuda_emulator.EmulatedCupy.RawModule(code=PROBES)


@pytest.fixture(scope="module")
def cp():
    return cuda_emulator.EmulatedCupy()


def test_signatures_are_read_after_macro_expansion():
    code = ('#define K(S, T) extern "C" __global__ void f_##S(const T* __restrict__ a, T b) {}\n'
            "K(f32, float)")
    assert cuda_emulator.kernel_signatures(code) == {"f_f32": [("const float*", "a"), ("float", "b")]}


@pytest.mark.parametrize("grid, block", [((3,), (5,)), ((2, 3), (4, 2)), ((2, 1, 2), (3, 2, 2))])
def test_every_thread_sees_its_own_indices(module, cp, grid, block):
    grid3 = tuple(grid) + (1,) * (3 - len(grid))
    block3 = tuple(block) + (1,) * (3 - len(block))
    out = cp.full((int(np.prod(grid3)) * int(np.prod(block3)), 4), -1, dtype=np.int64)
    module.get_function("where_am_i")(grid, block, (out,))
    expected = []
    for bz in range(grid3[2]):
        for by in range(grid3[1]):
            for bx in range(grid3[0]):
                for tz in range(block3[2]):
                    for ty in range(block3[1]):
                        for tx in range(block3[0]):
                            expected.append([bx + 1000 * by + 1000000 * bz, tx + 1000 * ty + 1000000 * tz,
                                             grid3[0] + 1000 * grid3[1] + 1000000 * grid3[2],
                                             block3[0] + 1000 * block3[1] + 1000000 * block3[2]])
    np.testing.assert_array_equal(out.get(), np.array(expected))


def test_warp_shuffle_butterfly_gives_each_lane_its_warps_sum(module, cp):
    values = np.arange(128, dtype=np.float64) ** 2
    out = cp.zeros(128, dtype=np.float64)
    module.get_function("warp_sums")((2,), (64,), (cp.asarray(values), out))
    per_warp = values.reshape(4, 32).sum(axis=1)  # 0..31 squared summed, and so on
    np.testing.assert_array_equal(out.get(), np.repeat(per_warp, 32))


def test_syncthreads_orders_a_shared_memory_reduction(module, cp):
    values = np.arange(1, 601, dtype=np.float32)
    out = cp.zeros(3, dtype=np.float32)
    module.get_function("block_sums")((3,), (256,), (cp.asarray(values), out, np.int32(600)))
    # blocks cover 1..256, 257..512 and 513..600
    np.testing.assert_array_equal(out.get(), [256 * 257 / 2, (512 * 513 - 256 * 257) / 2,
                                              (600 * 601 - 512 * 513) / 2])


@pytest.mark.parametrize("kernel", ["divergent_barrier", "shuffle_after_exit"])
def test_a_barrier_not_every_thread_reaches_fails_instead_of_hanging(module, cp, kernel):
    with pytest.raises(RuntimeError, match=rf"{kernel}: deadlock in block \(0, 0, 0\)"):
        module.get_function(kernel)((1,), (32,), (cp.zeros(32, dtype=np.float32),))


def test_launch_runs_the_kernel_on_the_arrays_memory(module, cp):
    x = cp.asarray(np.arange(10, dtype=np.float32))
    module.get_function("scale")((1,), (4,), (x, np.float32(2.5), np.int64(10)))
    np.testing.assert_array_equal(x.get(), np.arange(10) * 2.5)


@pytest.mark.parametrize("args, message", [
    ((None, np.float64(2.0), np.int64(3)), r"argument 0 \(float\* x\): expected a device array"),
    ((np.zeros(3, np.float32), np.float32(2.0), np.int64(3)), r"argument 0 .*got ndarray"),
    (("device_f64", np.float32(2.0), np.int64(3)), r"argument 0 .*dtype float64"),
    (("device_f32", np.float64(2.0), np.int64(3)), r"argument 1 \(float by\): expected a numpy "
                                                   r"float32 scalar, got float64"),
    (("device_f32", 2.0, np.int64(3)), r"argument 1 .*got float"),
    (("device_f32", np.float32(2.0), 3), r"argument 2 \(long long n\): .*got int"),
    (("device_f32", np.float32(2.0)), r"takes 3 arguments, got 2"),
])
def test_arguments_must_match_the_c_parameters_exactly(module, cp, args, message):
    devices = {"device_f32": cp.zeros(3, dtype=np.float32), "device_f64": cp.zeros(3, dtype=np.float64)}
    args = tuple(devices.get(a, a) if isinstance(a, str) else a for a in args)
    with pytest.raises(TypeError, match=message):
        module.get_function("scale")((1,), (4,), args)


@pytest.mark.parametrize("grid, block, message", [
    ((1,), (1025,), r"invalid block \(1025, 1, 1\)"),
    ((1,), (0,), r"invalid block \(0, 1, 1\)"),
    ((1, 65536), (32,), r"invalid grid \(1, 65536, 1\)"),
])
def test_launch_limits_are_cudas(module, cp, grid, block, message):
    with pytest.raises(RuntimeError, match=message):
        module.get_function("scale")(grid, block, (cp.zeros(3, dtype=np.float32), np.float32(1), np.int64(3)))


def test_unknown_kernel_names_the_ones_there_are(module):
    with pytest.raises(RuntimeError, match="no extern \"C\" __global__ kernel 'nope'.*'scale'"):
        module.get_function("nope")


def test_device_arrays_copy_on_upload_and_download(cp):
    host = np.arange(4.0)
    device = cp.asarray(host)
    host[0] = 99.0
    assert device.get()[0] == 0.0
    downloaded = device.get()
    downloaded[1] = 99.0
    assert device.get()[1] == 1.0
    assert type(downloaded) is np.ndarray and device.data.ptr == device.ctypes.data


def _arrival_order(module, cp, seed, monkeypatch):
    monkeypatch.setattr(cuda_emulator, "schedule_seed", seed)
    order = cp.zeros(65, dtype=np.int32)
    module.get_function("arrival_order")((1,), (64,), (order,))
    return order.get()[:64]


def test_the_seed_picks_the_thread_order_and_replays_it(module, cp, monkeypatch):
    # a GPU promises no order outside barriers, so neither may the emulator: a race must show
    orders = [_arrival_order(module, cp, seed, monkeypatch) for seed in (1, 2, 1)]
    assert sorted(orders[0]) == list(range(64))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[0], orders[2])
    assert not np.array_equal(orders[0], np.arange(64))


def test_shared_memory_starts_each_block_poisoned(module, cp):
    # what the previous block left is what a GPU may hand the next one; the emulator hands it NaN
    out, index = cp.zeros(3, dtype=np.float32), cp.zeros(3, dtype=np.int32)
    module.get_function("stale_shared")((3,), (32,), (out, index))
    assert out.get()[0] == 1.0 and np.isnan(out.get()[1:]).all()
    np.testing.assert_array_equal(index.get(), [7, -1, -1])


def test_a_failed_launch_names_its_schedule_seed(module, cp, monkeypatch):
    monkeypatch.setattr(cuda_emulator, "schedule_seed", 41)
    with pytest.raises(RuntimeError, match=r"schedule seed 41; TENSORGRAD_EMULATOR_SEED=41 replays it"):
        module.get_function("divergent_barrier")((1,), (32,), (cp.zeros(32, dtype=np.float32),))


def test_a_full_mask_shuffle_in_a_partial_warp_fails(module, cp):
    # lanes 48..63 do not exist: on a GPU the shuffle reads undefined values from them
    values = cp.asarray(np.ones(48))
    with pytest.raises(RuntimeError, match="warp_sums: full-warp shuffle .* in a partial warp"):
        module.get_function("warp_sums")((1,), (48,), (values, cp.zeros(48)))


@pytest.mark.parametrize("shift, message", [(1, "past the end of"), (-1, "before")])
def test_a_write_outside_a_buffer_fails_the_launch(module, cp, shift, message):
    out = cp.zeros(32, dtype=np.float32)
    with pytest.raises(RuntimeError, match=rf"shifted_write: wrote {message} a device buffer of 128 bytes"):
        module.get_function("shifted_write")((1,), (32,), (out, np.int32(shift)))
    assert (out.get() == 2).sum() == 31


@pytest.mark.parametrize("shift", [1, -1])
def test_a_read_outside_a_buffer_gets_nan(module, cp, shift):
    ones, out = cp.asarray(np.ones(32, np.float32)), cp.zeros(32, dtype=np.float32)
    module.get_function("shifted_read")((1,), (32,), (ones, out, np.int32(shift)))
    outside = 31 if shift == 1 else 0
    assert np.isnan(out.get()[outside]) and (np.delete(out.get(), outside) == 1).all()


def test_float32_denormals_flush_to_zero_as_with_cupys_ftz(module, cp):
    # CuPy hands NVRTC -ftz=true: 1e-30 * 1e-10 is a float32 denormal, so the GPU writes zero
    x = cp.asarray(np.array([1e-30, 1.0, 2.0], np.float32))
    module.get_function("scale")((1,), (4,), (x, np.float32(1e-10), np.int64(3)))
    np.testing.assert_array_equal(x.get(), np.array([0.0, 1e-10, 2e-10], np.float32))
