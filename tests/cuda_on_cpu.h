// Just enough of CUDA C for kernels/*.cu to compile with g++ and run on the CPU, so that the test
// suite executes the kernels' own source (indexing, vector loads, grid-stride loops, warp shuffles,
// block reductions) on machines without a GPU. tests/cuda_emulator.py builds and launches it.
//
// Execution model: the blocks of a launch run one after another; the threads of a block are fibers
// (ucontext) on one OS thread. A fiber runs until it finishes or waits at a barrier (__syncthreads,
// or the warp-wide exchange inside a shuffle), so every interleaving the kernels rely on happens and
// nothing else: a warp shuffle after some lanes exited, or a __syncthreads that not every thread
// reaches, leaves no fiber able to run, and the launch fails with a message instead of hanging.
//
// A GPU promises no order between threads outside a barrier, so each sweep over the runnable fibers
// goes in a fresh random order from a seeded generator (reset at every launch, so one seed replays
// one schedule): a missing barrier shows up as a wrong result under some seed instead of hiding
// behind one fixed order. Shared memory starts every block filled with 0xff bytes (NaN as float or
// double, -1 as an integer), as a GPU gives a block whatever the last one left: a kernel that reads
// shared memory it did not write this block gets NaN or a wild index instead of a plausible value.
//
// Not modelled: memory spaces (pointers are host pointers), partial shuffle masks (a full mask in a
// partial warp fails the launch), atomics, timing.
#pragma once

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Blocks run one at a time, so one static instance per variable is one block's shared memory. They
// all sit in one section, so that the launcher can poison them before each block.
#define __shared__ static __attribute__((section("emu_shared")))
// The linker's bounds of that section; weak, as a module without shared memory has no such section.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

struct dim3 {
    unsigned x, y, z;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

inline float __int_as_float(int bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}
inline double __longlong_as_double(long long bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

namespace emu {

const int MAX_THREADS_PER_BLOCK = 1024;
const int WARP_SIZE = 32;
const size_t FIBER_STACK_BYTES = 256 * 1024;

struct Barrier {
    int expected;
    int arrived;
    unsigned long generation;
};

struct Fiber {
    ucontext_t context;
    dim3 index;
    int warp;
    bool finished;
    Barrier* waiting_on;
    unsigned long waiting_generation;
};

struct Warp {
    Barrier barrier;
    alignas(8) unsigned char lanes[WARP_SIZE][8];
};

inline ucontext_t scheduler;
inline Fiber fibers[MAX_THREADS_PER_BLOCK];
inline char* stacks[MAX_THREADS_PER_BLOCK];
inline Warp warps[MAX_THREADS_PER_BLOCK / WARP_SIZE];
inline Barrier block_barrier;
inline Fiber* current;
inline dim3 block_index, block_dim, grid_dim;
inline void (*body)(void**);
inline void** body_args;
inline char last_error[512];
inline bool failed;
inline unsigned long long schedule_state;  // xorshift64*, reset from the seed at each launch
inline int order[MAX_THREADS_PER_BLOCK];

inline unsigned long long next_random() {
    schedule_state ^= schedule_state >> 12;
    schedule_state ^= schedule_state << 25;
    schedule_state ^= schedule_state >> 27;
    return schedule_state * 2685821657736338717ULL;
}

// Record the first failure; the launch reports it when the grid is done.
inline void fail(const char* message) {
    if (!failed) snprintf(last_error, sizeof last_error, "%s", message);
    failed = true;
}

// Park the calling fiber until every thread the barrier expects has arrived.
inline void wait(Barrier& barrier) {
    const unsigned long generation = barrier.generation;
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    current->waiting_on = &barrier;
    current->waiting_generation = generation;
    swapcontext(&current->context, &scheduler);
    current->waiting_on = nullptr;
}

inline void fiber_main() {
    body(body_args);
    current->finished = true;  // uc_link returns to the scheduler
}

inline bool runnable(const Fiber& fiber) {
    return !fiber.finished &&
           (fiber.waiting_on == nullptr || fiber.waiting_on->generation != fiber.waiting_generation);
}

inline int run_block(int threads) {
    if (__start_emu_shared != nullptr)
        memset(__start_emu_shared, 0xff, (size_t)(__stop_emu_shared - __start_emu_shared));
    block_barrier = Barrier{threads, 0, 0};
    for (int w = 0; w * WARP_SIZE < threads; ++w) {
        const int lanes = threads - w * WARP_SIZE < WARP_SIZE ? threads - w * WARP_SIZE : WARP_SIZE;
        warps[w].barrier = Barrier{lanes, 0, 0};
    }
    for (int t = 0; t < threads; ++t) {
        Fiber& fiber = fibers[t];
        if (stacks[t] == nullptr && (stacks[t] = static_cast<char*>(malloc(FIBER_STACK_BYTES))) == nullptr) {
                fail("cannot allocate fiber stacks");
            return 1;
        }
        fiber.index = dim3{t % block_dim.x, (t / block_dim.x) % block_dim.y, t / (block_dim.x * block_dim.y)};
        fiber.warp = t / WARP_SIZE;
        fiber.finished = false;
        fiber.waiting_on = nullptr;
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = stacks[t];
        fiber.context.uc_stack.ss_size = FIBER_STACK_BYTES;
        fiber.context.uc_link = &scheduler;
        makecontext(&fiber.context, fiber_main, 0);
    }
    int live = threads;
    for (int t = 0; t < threads; ++t) order[t] = t;
    while (live > 0) {
        for (int i = threads - 1; i > 0; --i) {  // Fisher-Yates: a fresh order every sweep
            const int j = (int)(next_random() % (unsigned long long)(i + 1));
            const int swapped = order[i];
            order[i] = order[j];
            order[j] = swapped;
        }
        bool progressed = false;
        for (int i = 0; i < threads; ++i) {
            const int t = order[i];
            if (!runnable(fibers[t])) continue;
            current = &fibers[t];
            swapcontext(&scheduler, &current->context);
            progressed = true;
            if (current->finished) --live;
        }
        if (!progressed) {
            failed = true;
            snprintf(last_error, sizeof last_error,
                     "deadlock in block (%u, %u, %u): %d of %d threads wait at a barrier that the others "
                     "never reach (a __syncthreads not every thread reaches, or a full-warp shuffle "
                     "after some lanes finished)",
                     block_index.x, block_index.y, block_index.z, live, threads);
            return 1;
        }
    }
    return 0;
}

// Run kernel `kernel_body(args)` over the grid, fibers ordered by `seed`; 0 on success, else
// last_error says why.
inline int launch(const unsigned* grid, const unsigned* block, void (*kernel_body)(void**), void** args,
                  unsigned long long seed) {
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    failed = false;
    schedule_state = (seed * 0x9e3779b97f4a7c15ULL) | 1;  // never 0, where xorshift would stay
    if (threads == 0 || threads > MAX_THREADS_PER_BLOCK) {
        snprintf(last_error, sizeof last_error, "invalid block (%u, %u, %u): 1 to %d threads", block[0],
                 block[1], block[2], MAX_THREADS_PER_BLOCK);
        return 1;
    }
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[0] > 2147483647u || grid[1] > 65535u ||
        grid[2] > 65535u) {
        snprintf(last_error, sizeof last_error,
                 "invalid grid (%u, %u, %u): x in [1, 2^31 - 1], y and z in [1, 65535]", grid[0], grid[1],
                 grid[2]);
        return 1;
    }
    body = kernel_body;
    body_args = args;
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
#if defined(__SSE__)
    // CuPy compiles with -ftz=true: float32 denormal inputs and results are zero on the GPU. x86 has
    // one flush-to-zero / denormals-are-zero switch for float and double alike, so the float64
    // kernels flush here too, where a GPU would keep denormals (their tests never reach 1e-308).
    // Fibers inherit the switch: getcontext copies it into each one's context.
    const unsigned caller_csr = _mm_getcsr();
    _mm_setcsr(caller_csr | 0x8040);  // FTZ | DAZ
#endif
    int rc = 0;
    for (unsigned z = 0; z < grid[2] && rc == 0; ++z)
        for (unsigned y = 0; y < grid[1] && rc == 0; ++y)
            for (unsigned x = 0; x < grid[0] && rc == 0; ++x) {
                block_index = dim3{x, y, z};
                rc = run_block((int)threads);
            }
#if defined(__SSE__)
    _mm_setcsr(caller_csr);
#endif
    return rc != 0 || failed ? 1 : 0;
}

}  // namespace emu

#define threadIdx (emu::current->index)
#define blockIdx (emu::block_index)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() {
    emu::wait(emu::block_barrier);
}

// Every lane publishes its value, all lanes of the warp meet, each reads its partner's, and they
// meet again before the slots can be reused.
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    if (mask != 0xffffffffu || width != 32) {
        emu::fail("the emulator supports only full-warp shuffles (mask 0xffffffff, width 32)");
        return value;
    }
    emu::Warp& warp = emu::warps[emu::current->warp];
    // A full mask names all 32 lanes; in a block whose last warp is partial, the missing lanes' values
    // are undefined on a GPU, so a kernel relying on them must fail here rather than read a stale slot.
    if (warp.barrier.expected != emu::WARP_SIZE) {
        emu::fail("full-warp shuffle (mask 0xffffffff) in a partial warp: the block's thread count is not a "
                  "multiple of 32, so some named lanes do not exist");
        return value;
    }
    const int lane = (int)((threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) %
                           emu::WARP_SIZE);
    memcpy(warp.lanes[lane], &value, sizeof(T));
    emu::wait(warp.barrier);
    T partner;
    memcpy(&partner, warp.lanes[(lane ^ lane_mask) % emu::WARP_SIZE], sizeof(T));
    emu::wait(warp.barrier);
    return partner;
}
