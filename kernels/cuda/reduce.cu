// Reductions: column sums (bias gradients, optionally fused with activation backward), row
// softmax, and the single-block finisher that turns per-block partial sums into a 0-d loss.
// All are deterministic: fixed reduction order for a given shape, no atomics.
#include "common.cuh"

// db[c] (+)= sum_r act'(.)*dy[r, c]; dz[r, c] = act'(.)*dy[r, c] when flags & 2.
// flags & 1: accumulate into db. Launch: geometry.columns(cols): blocks (32, 8), one block per
// 32 columns; thread (tx, ty) walks rows ty, ty+8, ...; the 8 partials are summed in order.
template <typename T>
__global__ void dc_col_sum_act(const T* dy, const T* x, const T* y, T* dz, T* db,
                               long long rows, long long cols, int kind, T alpha, int flags) {
    __shared__ T part[DC_COL_ROWS][DC_COL_TILE];
    long long c = (long long)blockIdx.x * DC_COL_TILE + threadIdx.x;
    T acc = T(0);
    if (c < cols) {
        for (long long r = threadIdx.y; r < rows; r += DC_COL_ROWS) {
            long long i = r * cols + c;
            T v = dc::act_backward(kind, dy[i], x[i], y[i], alpha);
            if (flags & 2) dz[i] = v;
            acc = acc + v;
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        T total = part[0][threadIdx.x];
        for (int k = 1; k < DC_COL_ROWS; ++k) total = total + part[k][threadIdx.x];
        db[c] = (flags & 1) ? db[c] + total : total;
    }
}
DC_INSTANTIATE(dc_col_sum_act)

// Row-wise max-subtracted softmax. Launch: geometry.rows(rows, cols): one block per row
// (grid-stride over rows), blockDim.x a power of two.
template <typename T>
__global__ void dc_softmax(const T* x, T* out, long long rows, long long cols) {
    __shared__ T buf[DC_MAX_BLOCK];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        T* yr = out + r * cols;
        T m = xr[0];
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = dc::max_nan(m, xr[c]);
        m = dc::block_max(m, buf);
        T s = T(0);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            T e = dc::d_exp(xr[c] - m);
            yr[c] = e;
            s = s + e;
        }
        s = dc::block_sum(s, buf);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = yr[c] / s;
    }
}
DC_INSTANTIATE(dc_softmax)

// out[0] = (sum of partials[0..n)) / divisor. Launch: geometry.finisher(): one block.
template <typename T>
__global__ void dc_sum_finish(const T* partials, long long n, T divisor, T* out) {
    __shared__ T buf[DC_MAX_BLOCK];
    T s = T(0);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) s = s + partials[i];
    s = dc::block_sum(s, buf);
    if (threadIdx.x == 0) out[0] = s / divisor;
}
DC_INSTANTIATE(dc_sum_finish)
