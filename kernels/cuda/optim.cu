// Fused in-place optimizer updates with torch.optim's rules (see Backend.sgd_update etc. in
// deepcore/backends/base.py: the same operations in the same order, in the parameter's dtype).
// Scalars (bias corrections included) are computed on the host. Launch: geometry.elementwise(n).
#include "common.cuh"

#define DC_MAXIMIZE 1

// flags: 1 maximize, 2 weight decay, 4 momentum, 8 nesterov, 16 first step (buf = g).
// buf points at param when there is no momentum buffer (never touched then).
template <typename T>
__global__ void dc_sgd(T* param, const T* grad, T* buf, long long n, T lr, T momentum,
                       T one_minus_dampening, T weight_decay, int flags) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T p = param[i];
        T g = (flags & DC_MAXIMIZE) ? -grad[i] : grad[i];
        if (flags & 2) g = g + weight_decay * p;
        if (flags & 4) {
            T b;
            if (flags & 16) {
                b = g;
            } else {
                b = buf[i] * momentum;
                b = b + one_minus_dampening * g;
            }
            buf[i] = b;
            g = (flags & 8) ? g + momentum * b : b;
        }
        param[i] = p - lr * g;
    }
}
DC_INSTANTIATE(dc_sgd)

// Adam / AdamW. flags: 1 maximize, 2 decoupled decay (param *= decay_factor), 4 L2 decay
// (g += weight_decay * param), 8 amsgrad (vmax = max(vmax, v), used as the second moment).
// step_size = lr / bias_correction1. vmax points at v without amsgrad (never written then).
template <typename T>
__global__ void dc_adam(T* param, const T* grad, T* m, T* v, T* vmax, long long n,
                        T decay_factor, T weight_decay, T beta1, T one_minus_beta1, T beta2,
                        T one_minus_beta2, T step_size, T bc2_sqrt, T eps, int flags) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T p = param[i];
        T g = (flags & DC_MAXIMIZE) ? -grad[i] : grad[i];
        if (flags & 2) p = p * decay_factor;
        if (flags & 4) g = g + weight_decay * p;
        T mi = m[i] * beta1;
        mi = mi + one_minus_beta1 * g;
        T vi = v[i] * beta2;
        vi = vi + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        T second = vi;
        if (flags & 8) {
            second = dc::max_nan(vmax[i], vi);
            vmax[i] = second;
        }
        T denom = dc::d_sqrt(second) / bc2_sqrt + eps;
        param[i] = p - step_size * mi / denom;
    }
}
DC_INSTANTIATE(dc_adam)

// RMSprop. flags: 1 maximize, 2 weight decay, 4 centered (gavg), 8 momentum (buf).
// gavg and buf point at square_avg when unused (never written then).
template <typename T>
__global__ void dc_rmsprop(T* param, const T* grad, T* square_avg, T* gavg, T* buf, long long n,
                           T lr, T alpha, T one_minus_alpha, T eps, T weight_decay, T momentum,
                           int flags) {
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T p = param[i];
        T g = (flags & DC_MAXIMIZE) ? -grad[i] : grad[i];
        if (flags & 2) g = g + weight_decay * p;
        T sq = square_avg[i] * alpha;
        sq = sq + one_minus_alpha * g * g;
        square_avg[i] = sq;
        T avg;
        if (flags & 4) {
            T ga = gavg[i] * alpha;
            ga = ga + one_minus_alpha * g;
            gavg[i] = ga;
            avg = dc::d_sqrt(sq - ga * ga) + eps;
        } else {
            avg = dc::d_sqrt(sq) + eps;
        }
        if (flags & 8) {
            T b = buf[i] * momentum;
            b = b + g / avg;
            buf[i] = b;
            param[i] = p - lr * b;
        } else {
            param[i] = p - lr * g / avg;
        }
    }
}
DC_INSTANTIATE(dc_rmsprop)
