// Fused losses: each writes the gradient and per-block (or per-row) partial sums of the loss;
// dc_sum_finish (reduce.cu) then writes the 0-d mean on the device. Nothing is read back.
#include "common.cuh"

// Softmax cross-entropy on integer labels. grad = (softmax(z) - onehot) / n; row_loss[r] =
// logsumexp(z_r) - z_r[label] (NaN when the label is out of range). Launch: geometry.rows.
template <typename T>
__global__ void dc_softmax_xent(const T* z, const long long* labels, T* grad, T* row_loss,
                                long long rows, long long cols, T n) {
    __shared__ T buf[DC_MAX_BLOCK];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* zr = z + r * cols;
        T* gr = grad + r * cols;
        long long label = labels[r];
        T m = zr[0];
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) m = dc::max_nan(m, zr[c]);
        m = dc::block_max(m, buf);
        T s = T(0);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            T e = dc::d_exp(zr[c] - m);
            gr[c] = e;
            s = s + e;
        }
        s = dc::block_sum(s, buf);
        for (long long c = threadIdx.x; c < cols; c += blockDim.x) {
            T p = gr[c] / s;
            if (c == label) p = p - T(1);
            gr[c] = p / n;
        }
        if (threadIdx.x == 0) {
            bool ok = label >= 0 && label < cols;
            T lse = dc::d_log(s) + m;
            row_loss[r] = ok ? lse - zr[label] : dc::quiet_nan<T>();
        }
    }
}
DC_INSTANTIATE(dc_softmax_xent)

// Binary cross-entropy on logits, stable form max(z,0) - z*t + log1p(exp(-|z|)).
// grad = (sigmoid(z) - t) / size; partials[block] = this block's sum of loss terms.
// Launch: geometry.reduction(n) (grid-stride; blockDim.x a power of two).
template <typename T>
__global__ void dc_bce_logits(const T* z, const T* t, T* grad, T* partials, long long n,
                              T size) {
    __shared__ T buf[DC_MAX_BLOCK];
    long long stride = (long long)blockDim.x * gridDim.x;
    T acc = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T zi = z[i];
        T ti = t[i];
        T zpos = zi < T(0) ? T(0) : zi;
        acc = acc + ((zpos - zi * ti) + dc::d_log1p(dc::d_exp(-dc::d_abs(zi))));
        grad[i] = (dc::sigmoid(zi) - ti) / size;
    }
    acc = dc::block_sum(acc, buf);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
DC_INSTANTIATE(dc_bce_logits)

// Mean squared error: grad = (p - t) * scale (scale = 2/size); partials[block] = sum of squares.
// Launch: geometry.reduction(n).
template <typename T>
__global__ void dc_mse(const T* p, const T* t, T* grad, T* partials, long long n, T scale) {
    __shared__ T buf[DC_MAX_BLOCK];
    long long stride = (long long)blockDim.x * gridDim.x;
    T acc = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T d = p[i] - t[i];
        acc = acc + d * d;
        grad[i] = d * scale;
    }
    acc = dc::block_sum(acc, buf);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
DC_INSTANTIATE(dc_mse)
