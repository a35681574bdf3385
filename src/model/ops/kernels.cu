// agop's fused CUDA kernels: the GPU twins of the CPU ops in kernels.rs (LayerNorm forward,
// affine and backward, the GELU backward) and softmax.rs (causal softmax, softmax backward).
// Each replaces a chain of candle's elementwise and reduction kernels (each a full pass over the
// tensor and an allocation) by one pass. Compiled at run time by NVRTC (cuda.rs) and checked to
// compile without a GPU by tests/cuda_kernels.rs; no headers, so NVRTC needs no include paths.
// Every kernel comes as NAME_f32 and NAME_f64 (candle's kernel naming); inputs are contiguous.
// Reductions and the LayerNorm statistics are taken in double, as the CPU kernels do.

#define WARP 32
typedef unsigned long long u64;

// The sum of v over the block, returned to every thread. `sh` holds one double per warp; the
// leading __syncthreads lets a kernel call this several times with the same `sh`.
__device__ double block_sum(double v, double* sh) {
  for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
  const int warps = (blockDim.x + WARP - 1) / WARP;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? sh[lane] : 0.0;
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  return sh[0];
}

__device__ double warp_sum(double v) {
  for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ double warp_max(double v) {
  for (int o = WARP / 2; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// LayerNorm statistics, one block per row of n: out row (n + 1) = [x̂ (n) | 1/σ],
// x̂ = (x − mean)/σ, σ = √(var + eps).
template <typename T>
__device__ void layer_norm_forward(const T* x, T* out, int n, double eps) {
  __shared__ double sh[WARP];
  const T* xr = x + (u64)blockIdx.x * n;
  T* o = out + (u64)blockIdx.x * (n + 1);
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += (double)xr[i];
  const double mean = block_sum(s, sh) / n;
  double v = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = (double)xr[i] - mean;
    v += d * d;
  }
  const double rstd = 1.0 / sqrt(block_sum(v, sh) / n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = (T)(((double)xr[i] - mean) * rstd);
  if (threadIdx.x == 0) o[n] = (T)rstd;
}

// y = x̂ ⊙ γ + β from packed rows; one thread per output element (rows × n).
template <typename T>
__device__ void layer_norm_affine(const T* packed, const T* gamma, const T* beta, T* out, int n, u64 total) {
  for (u64 k = blockIdx.x * (u64)blockDim.x + threadIdx.x; k < total; k += (u64)gridDim.x * blockDim.x) {
    const u64 row = k / n;
    const int i = (int)(k % n);
    out[k] = (T)((double)packed[row * (n + 1) + i] * (double)gamma[i] + (double)beta[i]);
  }
}

// dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = dy ⊙ γ; one block per row of n.
template <typename T>
__device__ void layer_norm_backward(const T* dy, const T* packed, const T* gamma, T* dx, int n) {
  __shared__ double sh[WARP];
  const T* d = dy + (u64)blockIdx.x * n;
  const T* p = packed + (u64)blockIdx.x * (n + 1);
  T* o = dx + (u64)blockIdx.x * n;
  double m1 = 0.0, m2 = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const double g = (double)d[i] * (double)gamma[i];
    m1 += g;
    m2 += g * (double)p[i];
  }
  m1 = block_sum(m1, sh) / n;
  m2 = block_sum(m2, sh) / n;
  const double r = (double)p[n];
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    o[i] = (T)(r * ((double)d[i] * (double)gamma[i] - m1 - (double)p[i] * m2));
}

// du ⊙ gelu'(pre), the erf form (Φ(x) + x·φ(x)) or the tanh form; one thread per element.
template <typename T>
__device__ void gelu_backward(const T* du, const T* pre, T* out, u64 total, int erf_form) {
  const T c = (T)0.7978845608028654;  // √(2/π)
  for (u64 k = blockIdx.x * (u64)blockDim.x + threadIdx.x; k < total; k += (u64)gridDim.x * blockDim.x) {
    const T x = pre[k];
    T d;
    if (erf_form) {
      const T cdf = (T)0.5 * ((T)1 + erf(x * (T)0.7071067811865476));
      const T pdf = exp((T)-0.5 * x * x) * (T)0.3989422804014327;  // 1/√(2π)
      d = cdf + x * pdf;
    } else {
      const T th = tanh(c * (x + (T)0.044715 * x * x * x));
      d = (T)0.5 * ((T)1 + th) + (T)0.5 * x * ((T)1 - th * th) * c * ((T)1 + (T)3 * (T)0.044715 * x * x);
    }
    out[k] = du[k] * d;
  }
}

// att = causal softmax(scale · s) per row of t; row r of the (…, t, t) scores keeps columns
// j ≤ r mod t. One warp per row.
template <typename T>
__device__ void causal_softmax(const T* s, T* att, u64 rows, int t, double scale) {
  const u64 row = (blockIdx.x * (u64)blockDim.x + threadIdx.x) / WARP;
  const int lane = threadIdx.x % WARP;
  if (row >= rows) return;
  const T* x = s + row * t;
  T* o = att + row * t;
  const int last = (int)(row % t);
  double m = __longlong_as_double(0xfff0000000000000ULL);  // −∞
  for (int j = lane; j <= last; j += WARP) m = fmax(m, scale * (double)x[j]);
  m = warp_max(m);
  double sum = 0.0;
  for (int j = lane; j <= last; j += WARP) sum += exp(scale * (double)x[j] - m);
  sum = warp_sum(sum);
  for (int j = lane; j < t; j += WARP) o[j] = j <= last ? (T)(exp(scale * (double)x[j] - m) / sum) : (T)0;
}

// dS = scale · att ⊙ (dAtt − Σ_j dAtt ⊙ att) per row of t; one warp per row.
template <typename T>
__device__ void softmax_backward(const T* datt, const T* att, T* ds, u64 rows, int t, double scale) {
  const u64 row = (blockIdx.x * (u64)blockDim.x + threadIdx.x) / WARP;
  const int lane = threadIdx.x % WARP;
  if (row >= rows) return;
  const T* d = datt + row * t;
  const T* a = att + row * t;
  T* o = ds + row * t;
  double dot = 0.0;
  for (int j = lane; j < t; j += WARP) dot += (double)d[j] * (double)a[j];
  dot = warp_sum(dot);
  for (int j = lane; j < t; j += WARP) o[j] = (T)(scale * (double)a[j] * ((double)d[j] - dot));
}

#define BOTH(NAME, PARAMS, ARGS)                                              \
  extern "C" __global__ void NAME##_f32 PARAMS(float) { NAME<float> ARGS; }   \
  extern "C" __global__ void NAME##_f64 PARAMS(double) { NAME<double> ARGS; }

#define P_LN_FWD(T) (const T* x, T* out, int n, double eps)
BOTH(layer_norm_forward, P_LN_FWD, (x, out, n, eps))
#define P_LN_AFF(T) (const T* packed, const T* gamma, const T* beta, T* out, int n, u64 total)
BOTH(layer_norm_affine, P_LN_AFF, (packed, gamma, beta, out, n, total))
#define P_LN_BWD(T) (const T* dy, const T* packed, const T* gamma, T* dx, int n)
BOTH(layer_norm_backward, P_LN_BWD, (dy, packed, gamma, dx, n))
#define P_GELU_BWD(T) (const T* du, const T* pre, T* out, u64 total, int erf_form)
BOTH(gelu_backward, P_GELU_BWD, (du, pre, out, total, erf_form))
#define P_SOFTMAX(T) (const T* s, T* att, u64 rows, int t, double scale)
BOTH(causal_softmax, P_SOFTMAX, (s, att, rows, t, scale))
#define P_SOFTMAX_BWD(T) (const T* datt, const T* att, T* ds, u64 rows, int t, double scale)
BOTH(softmax_backward, P_SOFTMAX_BWD, (datt, att, ds, rows, t, scale))
