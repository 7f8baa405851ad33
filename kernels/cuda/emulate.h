// Host emulation of the CUDA execution model, just enough for deepcore's kernels.
//
// Included (via common.cuh) only when DC_HOST_EMULATION is defined, i.e. when tests compile
// the kernels' .cu sources with g++ (kernels/cuda/host.py). It is a test instrument: it proves
// the kernels' arithmetic and indexing on the CPU, not their behaviour on a GPU.
//
// Model: blocks run one after another; the threads of a block run as cooperative fibers
// (ucontext) on one OS thread. __syncthreads() parks the calling fiber until every thread of
// the block has reached the barrier, so shared memory written before a barrier is visible after
// it, exactly as CUDA promises. A barrier that some threads reach after others have exited is
// reported as an error (undefined behaviour on a GPU). `__shared__` variables are function
// statics: shared by the block's fibers, and blocks never overlap.
#pragma once

#include <math.h>
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct dc_uint3 {
    unsigned x, y, z;
};

namespace dc_emu {

enum State { RUNNABLE, AT_BARRIER, DONE };

struct Fiber {
    ucontext_t ctx;
    State state;
    dc_uint3 tid;
};

// Error codes returned by launch(): 0 ok, 1 bad launch configuration, 2 barrier divergence.
inline dc_uint3 g_block_idx{0, 0, 0};
inline dc_uint3 g_thread_idx{0, 0, 0};
inline dim3 g_block_dim;
inline dim3 g_grid_dim;
inline ucontext_t g_scheduler;
inline Fiber* g_current = nullptr;
inline void (*g_trampoline)(void*) = nullptr;
inline void* g_closure = nullptr;
constexpr std::size_t kStackBytes = 256 * 1024;
constexpr unsigned kMaxThreadsPerBlock = 1024;

inline void fiber_main() {
    g_trampoline(g_closure);
    g_current->state = DONE;  // returning switches to uc_link, the scheduler
}

inline void syncthreads() {
    g_current->state = AT_BARRIER;
    swapcontext(&g_current->ctx, &g_scheduler);
}

template <class F>
void call_closure(void* f) {
    (*static_cast<F*>(f))();
}

__attribute__((noinline)) inline void init_fiber(Fiber& f, std::vector<char>& stack, dc_uint3 tid) {
    if (stack.empty()) stack.resize(kStackBytes);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack.data();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g_scheduler;
    makecontext(&f.ctx, fiber_main, 0);
    f.state = RUNNABLE;
    f.tid = tid;
}

// Runs one block to completion, honouring barriers; returns an error code.
inline int run_block(std::vector<Fiber>& fibers, std::vector<std::vector<char>>& stacks) {
    const dim3 block = g_block_dim;
    std::size_t k = 0;
    for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx, ++k)
                init_fiber(fibers[k], stacks[k], dc_uint3{tx, ty, tz});
    int error = 0;
    for (;;) {
        std::size_t waiting = 0, done = 0;
        for (Fiber& f : fibers) {
            if (f.state != RUNNABLE) continue;
            g_current = &f;
            g_thread_idx = f.tid;
            swapcontext(&g_scheduler, &f.ctx);
        }
        for (Fiber& f : fibers) {
            if (f.state == AT_BARRIER) ++waiting;
            if (f.state == DONE) ++done;
        }
        if (waiting == 0) break;
        if (done != 0) {
            std::fprintf(stderr,
                         "emulate.h: __syncthreads() reached by %zu threads of block "
                         "(%u,%u,%u) after %zu others exited\n",
                         waiting, g_block_idx.x, g_block_idx.y, g_block_idx.z, done);
            error = 2;
        }
        for (Fiber& f : fibers)
            if (f.state == AT_BARRIER) f.state = RUNNABLE;
    }
    return error;
}

// Runs every block of the grid in order (x fastest); returns an error code.
inline int run_grid(dim3 grid, dim3 block) {
    unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 ||
        nthreads > kMaxThreadsPerBlock || block.z > 64) {
        std::fprintf(stderr, "emulate.h: invalid launch configuration\n");
        return 1;
    }
    static std::vector<std::vector<char>> stacks;
    if (stacks.size() < nthreads) stacks.resize(nthreads);
    std::vector<Fiber> fibers(nthreads);
    g_grid_dim = grid;
    g_block_dim = block;
    int error = 0;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block_idx = dc_uint3{bx, by, bz};
                int e = run_block(fibers, stacks);
                if (e) error = e;
            }
    g_current = nullptr;
    return error;
}

// Runs body() once per thread of every block of the grid; returns an error code.
template <class F>
int launch(dim3 grid, dim3 block, F body) {
    g_trampoline = &call_closure<F>;
    g_closure = &body;
    return run_grid(grid, block);
}

}  // namespace dc_emu

// CUDA's 16-bit float types (cuda_bf16.h / cuda_fp16.h), reduced to what the kernels use: the
// bits, and the float conversions, bit-exact with CUDA's: round to nearest even, overflow to inf
// (half), denormals kept, and a NaN becomes CUDA's canonical NaN 0x7fff. Integer arithmetic
// only, so the "gpu" build's flush-to-zero flags cannot change a result.
#include <cstring>

struct __nv_bfloat16 {
    unsigned short __x;
};
struct __half {
    unsigned short __x;
};

inline unsigned dc_emu_float_bits(float f) {
    unsigned x;
    std::memcpy(&x, &f, sizeof x);
    return x;
}

inline float dc_emu_bits_float(unsigned x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned x = dc_emu_float_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};
    x += 0x7fffu + ((x >> 16) & 1u);  // a carry rounds into the exponent (up to inf): correct
    return __nv_bfloat16{static_cast<unsigned short>(x >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 h) { return dc_emu_bits_float(unsigned(h.__x) << 16); }

// Rounds the integer m / 2^shift to nearest, ties to even (1 <= shift <= 31).
inline unsigned dc_emu_round_shift(unsigned m, unsigned shift) {
    unsigned r = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    return r + ((rem > half || (rem == half && (r & 1u))) ? 1u : 0u);
}

inline __half __float2half_rn(float f) {
    unsigned x = dc_emu_float_bits(f);
    unsigned sign = (x >> 16) & 0x8000u, u = x & 0x7fffffffu;
    unsigned r;
    if (u > 0x7f800000u) return __half{0x7fffu};   // NaN
    if (u >= 0x477ff000u) r = 0x7c00u;              // >= 65520 (65504 + half an ulp): inf
    else if (u >= 0x38800000u)                      // a normal half (>= 2^-14)
        r = dc_emu_round_shift(u - 0x38000000u, 13);  // a carry steps the exponent: correct
    else if (u <= 0x33000000u) r = 0u;              // <= 2^-25: ties to the even zero
    else                                            // a denormal half: m * 2^(e - 150) / 2^-24
        r = dc_emu_round_shift((u & 0x7fffffu) | 0x800000u, 126u - (u >> 23));
    return __half{static_cast<unsigned short>(sign | r)};
}

inline float __half2float(__half h) {
    unsigned sign = unsigned(h.__x & 0x8000u) << 16, e = (h.__x >> 10) & 0x1fu, m = h.__x & 0x3ffu;
    if (e == 0x1fu) return dc_emu_bits_float(sign | 0x7f800000u | (m << 13));  // inf, NaN
    if (e == 0u) {
        if (m == 0u) return dc_emu_bits_float(sign);
        e = 113u;  // a denormal half is a normal float: normalise the mantissa
        while (!(m & 0x400u)) {
            m <<= 1;
            --e;
        }
        return dc_emu_bits_float(sign | (e << 23) | ((m & 0x3ffu) << 13));
    }
    return dc_emu_bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

// The GPU build's flush-to-zero (NVRTC -ftz=true, which CuPy always passes): float32 denormal
// inputs read as 0 and denormal results are flushed to 0, for the duration of a float launch.
// The CPU flags also cover double, so launchers use it for float kernels only (host.py).
#if defined(DC_EMULATE_FTZ)
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
namespace dc_emu {
struct FlushToZero {  // MXCSR: FTZ (bit 15) and DAZ (bit 6)
    unsigned saved;
    FlushToZero() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
    ~FlushToZero() { _mm_setcsr(saved); }
};
}  // namespace dc_emu
#elif defined(__aarch64__)
namespace dc_emu {
struct FlushToZero {  // FPCR.FZ (bit 24)
    unsigned long saved;
    FlushToZero() {
        __asm__ volatile("mrs %0, fpcr" : "=r"(saved));
        unsigned long v = saved | (1ul << 24);
        __asm__ volatile("msr fpcr, %0" : : "r"(v));
    }
    ~FlushToZero() { __asm__ volatile("msr fpcr, %0" : : "r"(saved)); }
};
}  // namespace dc_emu
#else
#error "DC_EMULATE_FTZ: no flush-to-zero control known for this CPU"
#endif
#endif

#define blockIdx (static_cast<const dc_uint3&>(::dc_emu::g_block_idx))
#define threadIdx (static_cast<const dc_uint3&>(::dc_emu::g_thread_idx))
#define blockDim (static_cast<const dim3&>(::dc_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::dc_emu::g_grid_dim))
#define __syncthreads() ::dc_emu::syncthreads()
