// Native CPU kernels of efusion's "native" backend: the forward of the fusion weights, the
// Laplacian-pyramid blend and both together (Mertens, Kautz & Van Reeth, "Exposure Fusion",
// Pacific Graphics 2007, Sections 3.1-3.2; pyramids after Burt & Adelson 1983).
//
// Each kernel repeats the operations of the reference code (efusion/reference/) in the same order
// and the same precision, and calls torch's own sqrt/exp/log (not the C library's, which round
// differently), so that the results equal the reference's bit for bit; the one exception is the
// sum over 4 or more frames at the few pixels torch's vectorised reduction leaves to its scalar
// tail (there torch adds in another order, which also depends on its thread count):
//   weights  = efusion.reference.measures.fusion_weights (mask None)
//   blend    = efusion.reference.blend.blend (a number depth, as depth_plan's coefficients)
//   fuse     = blend(stack, fusion_weights(stack))
// The file must be compiled without floating-point contraction (-ffp-contract=off): an FMA would
// round differently from the reference's separate multiply and add.
//
// Parallelism (issue 13): one at::parallel_for per pass over a pyramid level, over rows (all
// batches' rows together); each thread runs the whole chain of its rows with its own small row
// buffers. at::parallel_for respects torch.get_num_threads() and runs inline when called from
// inside a parallel region.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/log.h>
#include <ATen/ops/sqrt.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include <dirent.h>
#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>

namespace {

// border modes (efusion.reference.pyramid.border_index)
enum Border : int64_t { REPLICATE = 0, REFLECT101 = 1, SYMMETRIC = 2 };

// efusion.presets.Preset as integers (see efusion/backends/native/__init__.py: conventions())
struct Conventions {
  bool luma_fma;         // luma_form == "opencv_fma"
  int64_t lap_border;    // laplacian_border
  bool lap_opencv;       // laplacian_form == "opencv"
  bool sat_opencv;       // saturation_form == "opencv"
  int64_t down_border;   // down_border
  int64_t up_left;       // up_borders[0]
  int64_t up_right;      // up_borders[1]
  int64_t rgb[3];        // the stack channels the reference calls R, G, B (channel order)
  double luma[3];        // luma_weights (of R, G, B in that sense)
  double flat_contrast;  // float32 |Laplacian| below this counts as 0 (0: none)
  double integer_samples;  // 0, or M: samples are k / M; float32 measures contrast and saturation on k / M in double
};

Conventions conventions_from(at::IntArrayRef ints, at::ArrayRef<double> reals) {
  TORCH_CHECK(ints.size() == 10, "efusion_native: 10 convention codes expected, got ", ints.size());
  TORCH_CHECK(reals.size() == 5, "efusion_native: 3 luma weights, a flat contrast and an integer grid expected, got ",
              reals.size());
  for (int k = 7; k < 10; ++k)
    TORCH_CHECK(ints[k] >= 0 && ints[k] < 3, "efusion_native: channel index out of range: ", ints[k]);
  return Conventions{ints[0] != 0, ints[1], ints[2] != 0, ints[3] != 0, ints[4], ints[5], ints[6],
                     {ints[7], ints[8], ints[9]}, {reals[0], reals[1], reals[2]}, reals[3], reals[4]};
}

inline int64_t border_index(int64_t i, int64_t n, int64_t mode) {
  if (i >= 0 && i < n) return i;
  if (mode == REPLICATE) return std::min(std::max(i, int64_t(0)), n - 1);
  if (mode == SYMMETRIC) {
    const int64_t period = 2 * n;
    i = ((i % period) + period) % period;
    return i < n ? i : period - 1 - i;
  }
  if (n == 1) return 0;  // REFLECT101
  const int64_t period = 2 * n - 2;
  i = ((i % period) + period) % period;
  return i < n ? i : period - i;
}

// rows per task: enough work per task that scheduling costs nothing
inline int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(width, 1)); }

// ---------------------------------------------------------------------------------------------
// threads per call (issue 13, a busy machine): every parallel pass ends at a barrier that waits for
// all of its threads, so a thread the OS has descheduled for another process's sake stalls the pass
// (0.4 MP x 3 beside one busy process: 1.5-16x its idle time). Each operator therefore runs with
// at most the cores no other process is using when it starts: torch's thread count, capped at the
// online CPUs less the runnable threads of other processes (/proc/loadavg's running count, less
// this process's own threads in state R, e.g. OpenMP workers still spinning after a pass). An idle
// machine keeps every thread; with one busy process on two cores a call runs on one, which costs
// the parallel speed-up but no stall. Linux only (elsewhere: torch's count).

// threads = wanted, capped at the cores the others leave (at least 1)
int threads_for(int online, int running, int ours, int wanted) {
  const int others = std::max(0, running - std::max(ours, 1));
  return std::max(1, std::min(wanted, online - others));
}

// this process's threads in state R (running or runnable), from /proc/self/task/*/stat
int own_running_threads() {
  int count = 0;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return 1;
  char path[64], buffer[512];
  while (dirent* entry = readdir(tasks)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", entry->d_name);
    FILE* f = std::fopen(path, "r");
    if (f == nullptr) continue;
    const size_t got = std::fread(buffer, 1, sizeof buffer - 1, f);
    std::fclose(f);
    buffer[got] = 0;
    const char* close = std::strrchr(buffer, ')');  // "pid (name) S ...": the state follows the name
    if (close != nullptr && close[1] == ' ' && close[2] == 'R') ++count;
  }
  closedir(tasks);
  return count;
}

// the cores other processes leave free now (reading /proc costs ~40 us: a reading is reused for
// calls within 10 ms of it, so a loop of small calls pays it about once per 10 ms)
int free_cores() {
  static std::atomic<int64_t> read_at{std::numeric_limits<int64_t>::min() / 2};
  static std::atomic<int> cores{1};
  static const long online = sysconf(_SC_NPROCESSORS_ONLN);
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now - read_at.load(std::memory_order_relaxed) < 10'000'000) return cores.load(std::memory_order_relaxed);
  int running = 0, free = int(std::max(1L, online));
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%*f %*f %*f %d/", &running) == 1 && online > 0)
      free = threads_for(int(online), running, own_running_threads(), int(online));
    std::fclose(f);
  }
  cores.store(free, std::memory_order_relaxed);
  read_at.store(now, std::memory_order_relaxed);
  return free;
}

// the thread count for a call that may start now (see above)
int call_threads() {
  const int wanted = omp_get_max_threads();
  return wanted <= 1 ? wanted : std::max(1, std::min(wanted, free_cores()));
}

// for the calling thread's parallel passes during an operator: call_threads() threads (OpenMP's
// thread count is per calling thread: other threads' calls are not affected), restored after
// (an operator called by another, fuse by fusion, keeps the outer one's count)
thread_local int operator_depth = 0;

struct CallThreads {
  int previous;
  CallThreads() : previous(at::get_num_threads()) {  // (torch sets a new thread's count on first use)
    if (operator_depth++ == 0 && previous > 1 && !omp_in_parallel()) omp_set_num_threads(call_threads());
  }
  ~CallThreads() {
    if (--operator_depth == 0) omp_set_num_threads(previous);
  }
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;
};

// ---------------------------------------------------------------------------------------------
// weights (efusion.reference.measures)

// efusion._checks.check_samples's test, made by the weights pass as it reads the samples (the
// separate aminmax pass it replaces was ~7 % of a small forward: issue 13): a sample that is NaN,
// -inf or above max_sample (+inf included) sets `bad`; the operator then refuses the stack
struct SampleCheck {
  double max_sample;
  std::atomic<bool> bad{false};
};

// the refusal's message starts with this (NativeBackend.fuse_checked turns it into check_samples' ValueError)
constexpr const char* kBadSamples = "efusion_native: bad samples";

struct WeightParams {
  double contrast, saturation, exposure;  // exponents (numbers: 0 skips a measure, 1 skips its power)
  std::vector<double> mu, sigma;          // one per channel
  bool sigma_tensor;                      // measures.log_well_exposedness's tensor-sigma form
  SampleCheck* check = nullptr;           // where given, the samples are checked (SampleCheck)
};

// whether a row of `channels` planes holds a sample check_samples refuses
template <typename T>
bool bad_samples(const T* x0, int64_t channels, int64_t plane, int64_t width, double max_sample) {
  const T top = T(max_sample), bottom = -std::numeric_limits<T>::infinity();
  int ok = 1;
  for (int64_t c = 0; c < channels; ++c) {
    const T* ch = x0 + c * plane;
    for (int64_t x = 0; x < width; ++x) ok &= int(ch[x] <= top) & int(ch[x] > bottom);  // NaN fails both; no branch
  }
  return ok == 0;
}

void refuse_bad_samples(const WeightParams& p) {
  TORCH_CHECK(p.check == nullptr || !p.check->bad.load(std::memory_order_relaxed), kBadSamples,
              ": a sample is NaN, infinite or above ", p.check == nullptr ? 0.0 : p.check->max_sample);
}

// a float32 sample of an integer frame as its exact value k / M in double (measures.exact_samples)
inline double exact_sample(float x, double grid) { return std::nearbyint(double(x) * grid) / grid; }

// gray row (measures.luma) with one sample of the Laplacian's border on each side: out[0..W+1].
// G = double for T = float: the gray row of the exact samples (cv.integer_samples), in double.
template <typename T, typename G = T>
void gray_row(const T* frame, int64_t channels, int64_t plane, int64_t width, int64_t row, const Conventions& cv,
              G* out) {
  const T* r = frame + row * width;
  G* g = out + 1;
  if constexpr (!std::is_same<T, G>::value) {
    const double grid = cv.integer_samples, wr = cv.luma[0], wg = cv.luma[1], wb = cv.luma[2];
    if (channels == 1) {
      for (int64_t x = 0; x < width; ++x) g[x] = exact_sample(r[x], grid);
    } else {
      const T *red = r + cv.rgb[0] * plane, *green = r + cv.rgb[1] * plane, *blue = r + cv.rgb[2] * plane;
      for (int64_t x = 0; x < width; ++x)
        g[x] = (exact_sample(red[x], grid) * wr + exact_sample(green[x], grid) * wg) + exact_sample(blue[x], grid) * wb;
    }
  } else if (channels == 1) {
    std::copy(r, r + width, g);
  } else {
    const T* row_start = r;
    r = row_start + cv.rgb[0] * plane;
    const T* gr = row_start + cv.rgb[1] * plane;
    const T* b = row_start + cv.rgb[2] * plane;
    if (cv.luma_fma && std::is_same<T, float>::value) {
      // luma()'s float64 emulation of OpenCV's fma(b, wb, fma(r, wr, g * wg)) in float32
      const float wr = float(cv.luma[0]), wg = float(cv.luma[1]), wb = float(cv.luma[2]);
      for (int64_t x = 0; x < width; ++x) {
        const double green = double(float(gr[x]) * wg);
        const double red_green = double(float(double(r[x]) * double(wr) + green));
        g[x] = T(float(double(b[x]) * double(wb) + red_green));
      }
    } else {
      const T wr = T(cv.luma[0]), wg = T(cv.luma[1]), wb = T(cv.luma[2]);
      for (int64_t x = 0; x < width; ++x) g[x] = (r[x] * wr + gr[x] * wg) + b[x] * wb;
    }
  }
  out[0] = g[border_index(-1, width, cv.lap_border)];
  out[width + 1] = g[border_index(width, width, cv.lap_border)];
}

// The gray rows row - 1, row, row + 1 of frame n (borders by cv.lap_border), each computed once:
// slot n * 3 + src % 3 of `gray` holds gray row `src` while cached[slot] == src. Returns pointers
// to the three rows' first sample (their border samples at [-1] and [width]).
template <typename T, typename G = T>
std::array<const G*, 3> gray_rows3(const T* frame, int64_t n, int64_t row, int64_t channels, int64_t plane,
                                   int64_t height, int64_t width, const Conventions& cv, std::vector<G>& gray,
                                   std::vector<int64_t>& cached) {
  std::array<const G*, 3> rows3;
  for (int k = 0; k < 3; ++k) {
    const int64_t src = border_index(row + k - 1, height, cv.lap_border);
    const int64_t slot = n * 3 + src % 3;
    G* buf = gray.data() + slot * (width + 2);
    if (cached[slot] != src) {
      gray_row(frame, channels, plane, width, src, cv, buf);
      cached[slot] = src;
    }
    rows3[k] = buf + 1;
  }
  return rows3;
}

// The Laplacian of a gray row from its three rows (measures.laplacian: "differences", exact zeros
// where neighbours cancel, or filter2D's order of accumulation), |value| below `flat` set to 0
// (float32 luma rounding, not contrast); Absolute: its magnitude (measures.contrast).
template <bool Absolute, typename T>
void laplacian_row(const std::array<const T*, 3>& rows3, int64_t width, const Conventions& cv, T flat, T* out) {
  const T *up = rows3[0], *mid = rows3[1], *down = rows3[2];
  if (!cv.lap_opencv) {
    for (int64_t x = 0; x < width; ++x) {
      const T cc = mid[x];
      const T value = ((up[x] - cc) + (down[x] - cc)) + ((mid[x - 1] - cc) + (mid[x + 1] - cc));
      out[x] = Absolute ? std::abs(value) : value;
    }
  } else {
    for (int64_t x = 0; x < width; ++x) {
      const T value = (((up[x] + mid[x - 1]) + mid[x] * T(-4.0)) + mid[x + 1]) + down[x];
      out[x] = Absolute ? std::abs(value) : value;
    }
  }
  if (flat > T(0))
    for (int64_t x = 0; x < width; ++x) out[x] = std::abs(out[x]) < flat ? T(0) : out[x];  // a select: vectorises
}

// saturation's S^2 (measures.saturation_squared) of one row from its exact samples, in double
// (T = float, cv.integer_samples: measures.exact_samples), rounded to T
template <typename T>
void exact_saturation_row(const T* r, const T* g, const T* b, int64_t width, const Conventions& cv, T* out) {
  const double grid = cv.integer_samples;
  for (int64_t x = 0; x < width; ++x) {
    const double rr = exact_sample(float(r[x]), grid), gg = exact_sample(float(g[x]), grid),
                 bb = exact_sample(float(b[x]), grid);
    if (!cv.sat_opencv) {
      const double d1 = rr - gg, d2 = gg - bb, d3 = bb - rr;
      out[x] = T(((d1 * d1 + d2 * d2) + d3 * d3) / 9.0);
    } else {
      const double mean = ((rr + gg) + bb) * (1.0 / 3.0);
      const double d1 = rr - mean, d2 = gg - mean, d3 = bb - mean;
      out[x] = T((d1 * d1 + d2 * d2) + d3 * d3);
    }
  }
}

// torch's own sqrt / exp / log on a buffer: torch vectorises them (MKL VML or Sleef) with results
// that differ from the C library's in the last bit, elementwise and independent of position, so
// calling the same kernels gives the reference's bits. One call per row (all frames together).
enum class Unary { SQRT, EXP, LOG };

template <typename T>
void torch_unary_(T* data, int64_t n, Unary op) {
  if (n == 0) return;
  at::Tensor t = at::from_blob(data, {n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  if (op == Unary::SQRT)
    at::sqrt_(t);
  else if (op == Unary::EXP)
    at::exp_(t);
  else
    at::log_(t);
}

// measures.power in place: where(m > 0, exp(exponent * (log(where(m > 0, m, 1)) * scale)), 0)
template <typename T>
void power_(T* m, int64_t n, T exponent, T scale, std::vector<uint8_t>& positive) {
  for (int64_t x = 0; x < n; ++x) {
    positive[x] = m[x] > T(0);
    if (!positive[x]) m[x] = T(1);
  }
  torch_unary_(m, n, Unary::LOG);
  for (int64_t x = 0; x < n; ++x) m[x] = exponent * (m[x] * scale);
  torch_unary_(m, n, Unary::EXP);
  for (int64_t x = 0; x < n; ++x)
    if (!positive[x]) m[x] = T(0);
}

// raw weights (measures.raw_weights) of rows [i0, i1) of the flattened [B, H] rows of a
// contiguous [B, N, C, H, W] stack into out [B, N, 1, H, W], then their normalisation over N
// (measures.normalise, mask None; the sum over frames in the order of torch's vectorised sum).
// Two-pass form (fuse without N weight planes): with `sum_out` [B, 1, H, W] the raw weights stay in
// row buffers and only their sum over N is written (out unused); with `divide_by` [B, 1, H, W] the
// raw weights are divided by it (normalise false). `item_stride`: elements between batch items of
// the stack (default N C H W; a frame of a bigger stack: that stack's). `total_out` [B, 1, H, W] and
// `product_out` [B, N, 1, H, W]: where given, the normaliser and the measures' product before the
// floor (C^c S^s E^e) are also written there (efusion_native::fusion keeps them for the backward).
template <typename T>
void weights_rows(const T* stack, T* out, int64_t frames, int64_t channels, int64_t height, int64_t width,
                  const WeightParams& p, const Conventions& cv, bool normalise, int64_t i0, int64_t i1,
                  T* sum_out = nullptr, const T* divide_by = nullptr, int64_t item_stride = -1,
                  T* total_out = nullptr, T* product_out = nullptr) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain buffers: no autograd bookkeeping
  const int64_t plane = height * width, row_span = frames * width;
  const bool use_contrast = p.contrast != 0, use_saturation = channels == 3 && p.saturation != 0,
             use_exposure = p.exposure != 0;
  // samples of integer frames measured on their exact values, in double (measures.exact_samples)
  const bool exact = std::is_same<T, float>::value && cv.integer_samples > 0;
  // three gray rows per frame, keyed by row index (a row's Laplacian reads rows r - 1, r, r + 1)
  std::vector<T> gray(use_contrast && !exact ? static_cast<size_t>(frames * 3 * (width + 2)) : 0);
  std::vector<double> exact_gray(use_contrast && exact ? static_cast<size_t>(frames * 3 * (width + 2)) : 0);
  std::vector<double> exact_contrast(use_contrast && exact ? static_cast<size_t>(width) : 0);
  std::vector<int64_t> cached(static_cast<size_t>(frames * 3), -1);
  // one row of every frame: the measures, staged so that each torch call covers all frames
  std::vector<T> contrast(static_cast<size_t>(use_contrast ? row_span : 0));
  std::vector<T> saturation(static_cast<size_t>(use_saturation ? row_span : 0));
  std::vector<T> exposure(static_cast<size_t>(use_exposure ? row_span : 0));
  std::vector<uint8_t> positive(static_cast<size_t>(row_span));
  std::vector<T> keep_mask(static_cast<size_t>(use_saturation ? row_span : 0));
  std::vector<T> total(static_cast<size_t>(width));
  std::vector<T> row_weights(static_cast<size_t>(sum_out != nullptr ? row_span : 0));
  if (item_stride < 0) item_stride = frames * channels * plane;
  std::array<std::vector<T>, 4> levels;  // cascade-sum accumulators
  for (auto& l : levels) l.assign(static_cast<size_t>(width), T(0));
  const T c_exp = T(p.contrast), s_exp = T(p.saturation), e_exp = T(p.exposure);
  const T floor_ = T(1e-12);
  const T flat = std::is_same<T, float>::value ? T(cv.flat_contrast) : T(0);
  std::vector<T> mu(static_cast<size_t>(channels)), sigma2(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    mu[c] = T(p.mu[c]);
    const T s = T(p.sigma[c]);
    sigma2[c] = s * s;
  }
  const T exposure_scale = p.sigma_tensor ? T(-0.5) : T(-0.5 / (p.sigma[0] * p.sigma[0]));
  int64_t batch_done = -1;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = i / height, row = i % height;
    if (b != batch_done) {  // a new image: forget the cached gray rows
      std::fill(cached.begin(), cached.end(), -1);
      batch_done = b;
    }
    auto row_of = [&](int64_t n) {
      return sum_out != nullptr ? row_weights.data() + n * width : out + (b * frames + n) * plane + row * width;
    };
    for (int64_t n = 0; n < frames; ++n) {
      const T* frame = stack + b * item_stride + n * channels * plane;
      const T* x0 = frame + row * width;
      if (p.check != nullptr && bad_samples(x0, channels, plane, width, p.check->max_sample))
        p.check->bad.store(true, std::memory_order_relaxed);
      if (use_contrast && exact) {
        laplacian_row<true>(gray_rows3(frame, n, row, channels, plane, height, width, cv, exact_gray, cached), width,
                            cv, 0.0, exact_contrast.data());
        std::copy(exact_contrast.begin(), exact_contrast.end(), contrast.data() + n * width);  // rounded to T
      } else if (use_contrast) {
        laplacian_row<true>(gray_rows3(frame, n, row, channels, plane, height, width, cv, gray, cached), width, cv,
                            flat, contrast.data() + n * width);
      }
      if (use_saturation) {
        const T *r = x0 + cv.rgb[0] * plane, *g = x0 + cv.rgb[1] * plane, *bl = x0 + cv.rgb[2] * plane;
        T* s = saturation.data() + n * width;
        if (exact) {
          exact_saturation_row(r, g, bl, width, cv, s);
        } else if (!cv.sat_opencv) {
          for (int64_t x = 0; x < width; ++x) {
            const T a = r[x] - g[x], bb = g[x] - bl[x], c = bl[x] - r[x];
            s[x] = ((a * a + bb * bb) + c * c) / T(9.0);
          }
        } else {
          const T third = std::is_same<T, float>::value ? T(float(1.0 / 3.0)) : T(1.0 / 3.0);
          for (int64_t x = 0; x < width; ++x) {
            const T mean = ((r[x] + g[x]) + bl[x]) * third;
            const T a = r[x] - mean, bb = g[x] - mean, c = bl[x] - mean;
            s[x] = (a * a + bb * bb) + c * c;
          }
        }
      }
      if (use_exposure) {
        T* e = exposure.data() + n * width;
        for (int64_t c = 0; c < channels; ++c) {
          const T* ch = x0 + c * plane;
          const T m = mu[c];
          if (p.sigma_tensor) {
            const T s2 = sigma2[c];
            if (c == 0)
              for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] = (d * d) / s2; }
            else
              for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] = e[x] + (d * d) / s2; }
          } else {
            if (c == 0)
              for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] = d * d; }
            else
              for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] = e[x] + d * d; }
          }
        }
        for (int64_t x = 0; x < width; ++x) e[x] = e_exp * (e[x] * exposure_scale);
      }
    }
    // the transcendental steps, all frames of the row at once
    if (use_contrast && p.contrast != 1) power_(contrast.data(), row_span, c_exp, T(1.0), positive);
    if (use_saturation) {
      if (p.saturation == 1) {  // measures.safe_sqrt
        // branch-free selects on a mask of the measure's own width, so that both loops vectorise
        // (the byte mask and branches took a third of this pass: issue 13)
        T* s = saturation.data();
        T* keep = keep_mask.data();
        for (int64_t x = 0; x < row_span; ++x) {
          const T v = s[x];
          const bool alive = v > T(0);
          keep[x] = alive ? T(1) : T(0);
          s[x] = alive ? v : T(1);
        }
        torch_unary_(s, row_span, Unary::SQRT);
        for (int64_t x = 0; x < row_span; ++x) s[x] = keep[x] != T(0) ? s[x] : T(0);
      } else {  // S^s = (S^2)^(s/2)
        power_(saturation.data(), row_span, s_exp, T(0.5), positive);
      }
    }
    if (use_exposure) torch_unary_(exposure.data(), row_span, Unary::EXP);
    // W = C * S * E (the factors present, in that order) + 1e-12
    for (int64_t n = 0; n < frames; ++n) {
      T* w = row_of(n);
      const int64_t o = n * width;
      bool started = false;
      for (const std::vector<T>* factor : {&contrast, &saturation, &exposure}) {
        if (factor->empty()) continue;
        const T* f = factor->data() + o;
        if (started)
          for (int64_t x = 0; x < width; ++x) w[x] = w[x] * f[x];
        else
          std::copy(f, f + width, w);
        started = true;
      }
      if (!started) std::fill(w, w + width, T(1));
      if (product_out != nullptr) std::copy(w, w + width, product_out + (b * frames + n) * plane + row * width);
      for (int64_t x = 0; x < width; ++x) w[x] = w[x] + floor_;
      if (divide_by != nullptr) {
        const T* t = divide_by + b * plane + row * width;
        for (int64_t x = 0; x < width; ++x) w[x] = w[x] / t[x];
      }
    }
    if (!normalise) continue;
    // normalise: torch's sum over dim 1 (its vectorised outer sum adds frames in order, in
    // cascades of 16: aten/src/ATen/native/cpu/SumKernel.cpp)
    int64_t bits = 0;
    while ((int64_t(1) << bits) < frames) ++bits;
    const int64_t power_bits = std::max<int64_t>(4, bits / 4);
    const int64_t step = int64_t(1) << power_bits, mask = step - 1;
    for (auto& l : levels) std::fill(l.begin(), l.end(), T(0));
    int64_t k = 0;
    for (; k + step <= frames;) {
      for (int64_t j = 0; j < step; ++j, ++k) {
        const T* w = row_of(k);
        for (int64_t x = 0; x < width; ++x) levels[0][x] = levels[0][x] + w[x];
      }
      for (int64_t j = 1; j < 4; ++j) {
        for (int64_t x = 0; x < width; ++x) {
          levels[j][x] = levels[j][x] + levels[j - 1][x];
          levels[j - 1][x] = T(0);
        }
        if ((k & (mask << (j * power_bits))) != 0) break;
      }
    }
    for (; k < frames; ++k) {
      const T* w = row_of(k);
      for (int64_t x = 0; x < width; ++x) levels[0][x] = levels[0][x] + w[x];
    }
    for (int64_t x = 0; x < width; ++x) {
      T t = levels[0][x];
      for (int64_t j = 1; j < 4; ++j) t = t + levels[j][x];
      total[x] = t;
    }
    if (sum_out != nullptr) {
      std::copy(total.begin(), total.end(), sum_out + b * plane + row * width);
      continue;
    }
    if (total_out != nullptr) std::copy(total.begin(), total.end(), total_out + b * plane + row * width);
    for (int64_t n = 0; n < frames; ++n) {
      T* w = row_of(n);
      for (int64_t x = 0; x < width; ++x) w[x] = w[x] / total[x];
    }
  }
}

template <typename T>
void weights_into(const at::Tensor& stack, at::Tensor& out, const WeightParams& p, const Conventions& cv,
                  bool normalise = true, T* total_out = nullptr, T* product_out = nullptr) {
  const int64_t batch = stack.size(0), frames = stack.size(1), channels = stack.size(2), height = stack.size(3),
                width = stack.size(4);
  const T* src = stack.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  at::parallel_for(0, batch * height, grain_rows(width * frames), [&](int64_t i0, int64_t i1) {
    weights_rows<T>(src, dst, frames, channels, height, width, p, cv, normalise, i0, i1, nullptr, nullptr, -1,
                    total_out, product_out);
  });
}

// ---------------------------------------------------------------------------------------------
// pyramid (efusion.reference.pyramid)

// one sample of pyr_down's 1-D filter: ((x0 + x4) + 4 (x1 + x3) + 6 x2) * 1/16, in _down_1d's order
template <typename T>
inline T down_tap(T x0, T x1, T x2, T x3, T x4) {
  return (((x0 + x4) + T(4.0) * (x1 + x3)) + T(6.0) * x2) * T(0.0625);
}

// _down_1d along a row of `n` samples (columns first, as pyr_down): out has ceil(n / 2) samples.
// The interior reads the row in place; only the outputs whose taps cross the border look samples
// up by border_index (no padded copy of the row: issue 13, memory traffic).
template <typename T>
void down_row(const T* in, int64_t n, int64_t mode, T* out) {
  const int64_t m = (n + 1) / 2;
  auto at = [&](int64_t k) { return in[border_index(k, n, mode)]; };
  auto edge = [&](int64_t j) { out[j] = down_tap(at(2 * j - 2), at(2 * j - 1), at(2 * j), at(2 * j + 1), at(2 * j + 2)); };
  // interior: 2j - 2 >= 0 and 2j + 2 <= n - 1
  const int64_t first = std::min<int64_t>(1, m), last = std::max<int64_t>(first, std::min<int64_t>(m, (n - 3) / 2 + 1));
  for (int64_t j = 0; j < first; ++j) edge(j);
  for (int64_t j = first; j < last; ++j) {
    const T* q = in + 2 * j - 2;
    out[j] = down_tap(q[0], q[1], q[2], q[3], q[4]);
  }
  for (int64_t j = last; j < m; ++j) edge(j);
}

// pyr_up's 1-D step: `coarse` (m samples, padded by one on each side by the up borders) -> `out`
// (n = 2m - 1 or 2m samples): even (before + after) * 1/8 + centre * 3/4, odd (centre + after) / 2
// (the interior reads `coarse` in place, the ends look their neighbours up: no padded copy)
template <typename T>
void up_row(const T* coarse, int64_t m, int64_t n, int64_t left, int64_t right, T* out) {
  auto at = [&](int64_t k) { return k < 0 ? coarse[border_index(k, m, left)] : k >= m ? coarse[border_index(k, m, right)] : coarse[k]; };
  auto edge = [&](int64_t i) {
    const T before = at(i - 1), centre = at(i), after = at(i + 1);
    out[2 * i] = (before + after) * T(0.125) + centre * T(0.75);
    if (2 * i + 1 < n) out[2 * i + 1] = (centre + after) * T(0.5);
  };
  const int64_t count = (n + 1) / 2;  // even outputs: i with 2i < n
  // interior: i - 1 >= 0, i + 1 <= m - 1 and both outputs inside
  const int64_t first = std::min<int64_t>(1, count), last = std::max<int64_t>(first, std::min<int64_t>(m - 1, n / 2));
  for (int64_t i = 0; i < first; ++i) edge(i);
  for (int64_t i = first; i < last; ++i) {
    const T before = coarse[i - 1], centre = coarse[i], after = coarse[i + 1];
    out[2 * i] = (before + after) * T(0.125) + centre * T(0.75);
    out[2 * i + 1] = (centre + after) * T(0.5);
  }
  for (int64_t i = last; i < count; ++i) edge(i);
}

// fine row `row` of pyr_up(coarse [h, w]) to a [H, W] level, the coarse rows given by
// `coarse_row(c, k)` (channel c, row k): the rows step (the reference upsamples rows first, then
// columns) into `vertical` (w samples), then the columns step into out (W samples)
template <typename T, typename Rows>
void up_fine_row_from(Rows coarse_row, int64_t c, int64_t h, int64_t w, int64_t row, int64_t width, const Conventions& cv,
                      T* vertical, T* out) {
  const int64_t i = row / 2;
  if (row % 2 == 0) {
    const T* before = coarse_row(c, border_index(i - 1, h, i - 1 < 0 ? cv.up_left : cv.up_right));
    const T* centre = coarse_row(c, i);
    const T* after = coarse_row(c, border_index(i + 1, h, cv.up_right));
    for (int64_t x = 0; x < w; ++x) vertical[x] = (before[x] + after[x]) * T(0.125) + centre[x] * T(0.75);
  } else {
    const T* centre = coarse_row(c, i);
    const T* after = coarse_row(c, border_index(i + 1, h, cv.up_right));
    for (int64_t x = 0; x < w; ++x) vertical[x] = (centre[x] + after[x]) * T(0.5);
  }
  up_row(vertical, w, width, cv.up_left, cv.up_right, out);
}

// up_fine_row_from of one contiguous coarse plane [h, w]
template <typename T>
void up_fine_row(const T* coarse, int64_t h, int64_t w, int64_t row, int64_t width, const Conventions& cv, T* vertical,
                 T* out) {
  up_fine_row_from([&](int64_t, int64_t k) { return coarse + k * w; }, 0, h, w, row, width, cv, vertical, out);
}

struct Level {
  int64_t h, w;
};

// ---------------------------------------------------------------------------------------------
// blend (efusion.reference.blend.blend): one frame at a time, per level the frame's next Gaussian
// level (image and weights), then its weighted Laplacian level and weighted Gaussian level added
// into the blended pyramid; then the collapse.

// The blend's state: the blended levels (band and residual, undefined where the depth plan has no
// such term) and one frame's Gaussian levels 1.. (scratch, reused from frame to frame).
struct Blend {
  std::vector<Level> levels;
  std::vector<at::Tensor> bands, residuals, images, masks;
  std::vector<double> band_coef, residual_coef;
  int64_t batch, channels;
};

Blend make_blend(int64_t batch, int64_t channels, int64_t height, int64_t width, const std::vector<double>& band_coef,
                 const std::vector<double>& residual_coef, const at::TensorOptions& options, bool accumulators) {
  const int64_t top = int64_t(band_coef.size());
  TORCH_CHECK(top >= 1 && int64_t(residual_coef.size()) == top, "efusion_native: bad depth plan");
  Blend s{{{height, width}}, {}, {}, {}, {}, band_coef, residual_coef, batch, channels};
  for (int64_t l = 1; l < top; ++l) s.levels.push_back({(s.levels.back().h + 1) / 2, (s.levels.back().w + 1) / 2});
  s.bands.resize(static_cast<size_t>(top));
  s.residuals.resize(static_cast<size_t>(top));
  s.images.resize(static_cast<size_t>(top));
  s.masks.resize(static_cast<size_t>(top));
  for (int64_t l = 0; l < top; ++l) {
    const Level lv = s.levels[l];
    if (accumulators && l < top - 1 && band_coef[l] != 0) s.bands[l] = at::empty({batch, channels, lv.h, lv.w}, options);
    if (accumulators && residual_coef[l] != 0) s.residuals[l] = at::empty({batch, channels, lv.h, lv.w}, options);
    if (l > 0) {
      s.images[l] = at::empty({batch, channels, lv.h, lv.w}, options);
      s.masks[l] = at::empty({batch, 1, lv.h, lv.w}, options);
    }
  }
  return s;
}

// one frame into the blend (reference blend's loop body): `image0`/`weight0` point at item 0's
// frame [C, H, W] and weights [H, W], item b at + b * image_step / weight_step; the first frame's
// terms are assigned, the others added, as in the reference
template <typename T>
void blend_add(Blend& s, const T* image0, int64_t image_step, const T* weight0, int64_t weight_step, bool first,
               const Conventions& cv) {
  const int64_t batch = s.batch, channels = s.channels, top = int64_t(s.band_coef.size());
  auto& levels = s.levels;
  auto& bands = s.bands;
  auto& residuals = s.residuals;
  auto& images = s.images;
  auto& masks = s.masks;
  {
    const int64_t n = first ? 0 : 1;
    for (int64_t l = 0; l < top; ++l) {
      const Level lv = levels[l];
      const int64_t plane = lv.h * lv.w;
      // this level's image and weights of item b
      auto image = [&](int64_t b) -> const T* {
        return l == 0 ? image0 + b * image_step : images[l].data_ptr<T>() + b * channels * plane;
      };
      auto weight = [&](int64_t b) -> const T* {
        return l == 0 ? weight0 + b * weight_step : masks[l].data_ptr<T>() + b * plane;
      };
      const bool band = bands[l].defined(), residual = residuals[l].defined();
      if (!band && !residual && l == top - 1) continue;
      T* band_data = band ? bands[l].data_ptr<T>() : nullptr;
      T* residual_data = residual ? residuals[l].data_ptr<T>() : nullptr;
      const Level cl = l < top - 1 ? levels[l + 1] : Level{0, 0};
      // one fine row of item b: band += w (x - pyr_up(coarse)), residual += w x (assigned for the first frame)
      auto add_row = [&](int64_t b, int64_t row, auto coarse_row, T* vertical, T* up) {
        const T* wr = weight(b) + row * lv.w;
        for (int64_t c = 0; c < channels; ++c) {
          const T* x = image(b) + c * plane + row * lv.w;
          const int64_t offset = (b * channels + c) * plane + row * lv.w;
          if (band) {
            up_fine_row_from(coarse_row, c, cl.h, cl.w, row, lv.w, cv, vertical, up);
            T* acc = band_data + offset;
            if (n == 0)
              for (int64_t k = 0; k < lv.w; ++k) acc[k] = wr[k] * (x[k] - up[k]);
            else
              for (int64_t k = 0; k < lv.w; ++k) acc[k] = acc[k] + wr[k] * (x[k] - up[k]);
          }
          if (residual) {
            T* acc = residual_data + offset;
            if (n == 0)
              for (int64_t k = 0; k < lv.w; ++k) acc[k] = wr[k] * x[k];
            else
              for (int64_t k = 0; k < lv.w; ++k) acc[k] = acc[k] + wr[k] * x[k];
          }
        }
      };
      if (l < top - 1) {
        // one parallel region for the level (issue 13): each thread computes its coarse rows (the next
        // Gaussian level of image and weights), then, while their fine rows are still in cache, the
        // band and residual rows those coarse rows cover (fine rows 2j and 2j + 1 of coarse row j);
        // a coarse row another thread owns is computed again into a private row (halo)
        const Level fl = lv;
        const int64_t planes = channels + 1, cplane = cl.h * cl.w;
        T* next_image = images[l + 1].data_ptr<T>();
        T* next_weight = masks[l + 1].data_ptr<T>();
        auto src = [&](int64_t b, int64_t p) { return p < channels ? image(b) + p * plane : weight(b); };
        auto dst = [&](int64_t b, int64_t p) {
          return p < channels ? next_image + (b * channels + p) * cplane : next_weight + b * cplane;
        };
        // coarse rows per cache block: their fine rows (about 2 per coarse row, all planes) within ~256 KiB
        const int64_t block = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, 2 * fl.w * planes));
        at::parallel_for(0, batch * cl.h, grain_rows(fl.w * planes * 2), [&](int64_t i0, int64_t i1) {
          std::vector<T> rows(static_cast<size_t>(planes * 5 * cl.w));  // column-filtered fine rows, by index mod 5
          std::vector<int64_t> cached(static_cast<size_t>(planes * 5), -1);
          std::vector<T> halo(static_cast<size_t>(2 * channels * cl.w));  // two private coarse rows (all channels)
          int64_t halo_row[2] = {-1, -1}, last_halo = 1;
          std::vector<T> vertical(static_cast<size_t>(cl.w)), up(static_cast<size_t>(fl.w));
          int64_t cached_item = -1;
          // coarse row j of item b, plane p, into out (pyr_down's 5 x 5 taps: rows filtered along columns, cached by row index mod 5)
          auto down_one = [&](int64_t b, int64_t j, int64_t p, T* o) {
            if (b != cached_item) {
              std::fill(cached.begin(), cached.end(), -1);
              cached_item = b;
            }
            const T* in = src(b, p);
            const T* taps[5];
            for (int k = 0; k < 5; ++k) {
              const int64_t r = border_index(2 * j + k - 2, fl.h, cv.down_border);
              const int64_t slot = p * 5 + r % 5;
              T* buf = rows.data() + slot * cl.w;
              if (cached[slot] != r) {
                down_row(in + r * fl.w, fl.w, cv.down_border, buf);
                cached[slot] = r;
              }
              taps[k] = buf;
            }
            for (int64_t x = 0; x < cl.w; ++x) o[x] = down_tap(taps[0][x], taps[1][x], taps[2][x], taps[3][x], taps[4][x]);
          };
          int64_t done = i0;  // coarse rows [i0, done) of this thread are in the level tensors
          auto compute_to = [&](int64_t end) {
            for (; done < end; ++done) {
              const int64_t b = done / cl.h, j = done % cl.h;
              for (int64_t p = 0; p < planes; ++p) down_one(b, j, p, dst(b, p) + j * cl.w);
            }
          };
          for (int64_t s0 = i0; s0 < i1;) {
            const int64_t b = s0 / cl.h, item_end = (b + 1) * cl.h;
            const int64_t s1 = std::min({s0 + block, i1, item_end});
            compute_to(std::min(s1 + 1, std::min(i1, item_end)));  // with the next row: odd fine rows read it
            // coarse row k of item b, channel c: from the tensors where this thread computed it, else a halo row
            auto coarse_row = [&](int64_t c, int64_t k) -> const T* {
              const int64_t flat = b * cl.h + k;
              if (flat >= i0 && flat < done) return next_image + (b * channels + c) * cplane + k * cl.w;
              int64_t slot = halo_row[0] == flat ? 0 : halo_row[1] == flat ? 1 : -1;
              if (slot < 0) {  // a row up_fine_row_from reads at most two halo rows at once: keep the last one
                slot = 1 - last_halo;
                for (int64_t q = 0; q < channels; ++q) down_one(b, k, q, halo.data() + (slot * channels + q) * cl.w);
                halo_row[slot] = flat;
              }
              last_halo = slot;
              return halo.data() + (slot * channels + c) * cl.w;
            };
            if (band || residual) {
              const int64_t j0 = s0 - b * cl.h, j1 = s1 - b * cl.h;
              const int64_t r1 = j1 == cl.h ? fl.h : 2 * j1;
              for (int64_t row = 2 * j0; row < r1; ++row) add_row(b, row, coarse_row, vertical.data(), up.data());
            }
            s0 = s1;
          }
        });
        continue;
      }
      // the top level: residual only
      at::parallel_for(0, batch * lv.h, grain_rows(lv.w * channels * 2), [&](int64_t i0, int64_t i1) {
        std::vector<T> vertical(static_cast<size_t>(cl.w)), up(static_cast<size_t>(lv.w));
        auto no_coarse = [](int64_t, int64_t) -> const T* { return nullptr; };
        for (int64_t i = i0; i < i1; ++i) add_row(i / lv.h, i % lv.h, no_coarse, vertical.data(), up.data());
      });
    }
  }
}

// the collapse of the blended pyramid (reference blend's end): result_l = level_sum(l) + pyr_up(result_{l+1});
// `in_place`: each level's result overwrites its band (else residual) accumulator, which is read
// only at the same element first (no new level-sized tensors: the blend's own accumulators only)
template <typename T>
at::Tensor blend_collapse(const Blend& s, const Conventions& cv, const at::TensorOptions& options,
                          bool in_place = false) {
  const int64_t batch = s.batch, channels = s.channels, top = int64_t(s.band_coef.size());
  const auto& levels = s.levels;
  const auto& bands = s.bands;
  const auto& residuals = s.residuals;
  const auto& band_coef = s.band_coef;
  const auto& residual_coef = s.residual_coef;
  at::Tensor result;
  for (int64_t l = top - 1; l >= 0; --l) {
    const Level lv = levels[l];
    const bool band = bands[l].defined(), residual = residuals[l].defined();
    const bool coarser = result.defined();
    if (!band && !residual && !coarser) continue;
    at::Tensor out = in_place && band ? bands[l] : in_place && residual ? residuals[l]
                                                  : at::empty({batch, channels, lv.h, lv.w}, options);
    T* out_data = out.data_ptr<T>();
    const T* band_data = band ? bands[l].data_ptr<T>() : nullptr;
    const T* residual_data = residual ? residuals[l].data_ptr<T>() : nullptr;
    const T* coarse_data = coarser ? result.data_ptr<T>() : nullptr;
    const Level cl = coarser ? levels[l + 1] : Level{0, 0};
    const double bc = band_coef[l], rc = residual_coef[l];
    const T band_scale = T(bc), residual_scale = T(rc);
    at::parallel_for(0, batch * lv.h, grain_rows(lv.w * channels), [&](int64_t i0, int64_t i1) {
      std::vector<T> vertical(static_cast<size_t>(cl.w)), up(static_cast<size_t>(lv.w));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / lv.h, row = i % lv.h;
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t offset = (b * channels + c) * lv.h * lv.w + row * lv.w;
          T* o = out_data + offset;
          if (band || residual) {
            const T* bd = band ? band_data + offset : nullptr;
            const T* rd = residual ? residual_data + offset : nullptr;
            for (int64_t k = 0; k < lv.w; ++k) {
              // blend.level_sum: coefficient * level (skipped for 1), band term first
              T value;
              if (band) {
                value = bc == 1 ? bd[k] : band_scale * bd[k];
                if (residual) value = value + (rc == 1 ? rd[k] : residual_scale * rd[k]);
              } else {
                value = rc == 1 ? rd[k] : residual_scale * rd[k];
              }
              o[k] = value;
            }
          }
          if (coarser) {
            up_fine_row(coarse_data + (b * channels + c) * cl.h * cl.w, cl.h, cl.w, row, lv.w, cv, vertical.data(),
                        up.data());
            if (band || residual)
              for (int64_t k = 0; k < lv.w; ++k) o[k] = o[k] + up[k];
            else
              std::copy(up.begin(), up.end(), o);
          }
        }
      }
    });
    result = out;
  }
  TORCH_CHECK(result.defined(), "efusion_native: the depth plan selected no pyramid level");
  return result;
}


template <typename T>
at::Tensor blend_impl(const at::Tensor& stack, at::Tensor weights, const std::vector<double>& band_coef,
                      const std::vector<double>& residual_coef, const Conventions& cv) {
  const int64_t batch = stack.size(0), frames = stack.size(1), channels = stack.size(2);
  const int64_t height = stack.size(3), width = stack.size(4), plane = height * width;
  Blend s = make_blend(batch, channels, height, width, band_coef, residual_coef, stack.options(), true);
  const T* stack_data = stack.data_ptr<T>();
  const T* weight_data = weights.data_ptr<T>();
  for (int64_t n = 0; n < frames; ++n)
    blend_add<T>(s, stack_data + n * channels * plane, frames * channels * plane, weight_data + n * plane, frames * plane,
                 n == 0, cv);
  weights = at::Tensor();  // the weights and one frame's Gaussian levels: no longer needed (fuse_op's
  s.images.clear();        // weights are freed here; a caller's stay alive through its own reference)
  s.masks.clear();
  return blend_collapse<T>(s, cv, stack.options(), true);
}

// fuse in two passes over the frames, so that memory does not grow with N (issue 13): first the
// weights' normaliser (their sum over frames, [B, 1, H, W]), then per frame its raw weights again,
// divided by it (the bits of weights_into's normalised weights), added into the blend. Costs the
// raw weights twice (NativeBackend.fuse takes it when the N weight planes would be large).
template <typename T>
at::Tensor fuse_two_pass(const at::Tensor& stack, const WeightParams& p, const std::vector<double>& band_coef,
                         const std::vector<double>& residual_coef, const Conventions& cv) {
  const int64_t batch = stack.size(0), frames = stack.size(1), channels = stack.size(2);
  const int64_t height = stack.size(3), width = stack.size(4), plane = height * width;
  const T* src = stack.data_ptr<T>();
  at::Tensor total = at::empty({batch, 1, height, width}, stack.options());
  T* total_data = total.data_ptr<T>();
  at::parallel_for(0, batch * height, grain_rows(width * frames), [&](int64_t i0, int64_t i1) {
    weights_rows<T>(src, nullptr, frames, channels, height, width, p, cv, true, i0, i1, total_data);
  });
  refuse_bad_samples(p);
  WeightParams again = p;  // the second pass reads the same samples: no second check
  again.check = nullptr;
  Blend s = make_blend(batch, channels, height, width, band_coef, residual_coef, stack.options(), true);
  at::Tensor weight = at::empty({batch, 1, height, width}, stack.options());
  T* weight_data = weight.data_ptr<T>();
  const int64_t item_stride = frames * channels * plane;
  for (int64_t n = 0; n < frames; ++n) {
    const T* frame = src + n * channels * plane;
    at::parallel_for(0, batch * height, grain_rows(width), [&](int64_t i0, int64_t i1) {
      weights_rows<T>(frame, weight_data, 1, channels, height, width, again, cv, false, i0, i1, nullptr, total_data,
                      item_stride);
    });
    blend_add<T>(s, frame, item_stride, weight_data, plane, n == 0, cv);
  }
  total = at::Tensor();
  weight = at::Tensor();
  s.images.clear();
  s.masks.clear();
  return blend_collapse<T>(s, cv, stack.options(), true);
}

// ---------------------------------------------------------------------------------------------
// operators

void check_stack(const at::Tensor& stack, const char* name) {
  TORCH_CHECK(stack.device().is_cpu(), "efusion_native: ", name, " must be on the CPU, got ", stack.device());
  TORCH_CHECK(stack.scalar_type() == at::kFloat || stack.scalar_type() == at::kDouble,
              "efusion_native: ", name, " must be float32 or float64, got ", stack.scalar_type());
  TORCH_CHECK(stack.dim() == 5, "efusion_native: ", name, " must be [B, N, C, H, W], got ", stack.sizes());
}

WeightParams weight_params(at::ArrayRef<double> exponents, at::ArrayRef<double> mu, at::ArrayRef<double> sigma,
                           bool sigma_tensor, int64_t channels) {
  TORCH_CHECK(exponents.size() == 3, "efusion_native: 3 exponents expected, got ", exponents.size());
  TORCH_CHECK(int64_t(mu.size()) == channels && int64_t(sigma.size()) == channels,
              "efusion_native: one mu and sigma per channel expected");
  return WeightParams{exponents[0], exponents[1], exponents[2], mu.vec(), sigma.vec(), sigma_tensor};
}

// the normalised weights [B, N, 1, H, W]; max_sample > 0: the samples checked (SampleCheck)
at::Tensor checked_weights(const at::Tensor& stack_in, at::ArrayRef<double> exponents, at::ArrayRef<double> mu,
                           at::ArrayRef<double> sigma, bool sigma_tensor, at::ArrayRef<double> reals,
                           at::IntArrayRef codes, double max_sample) {
  check_stack(stack_in, "stack");
  const at::Tensor stack = stack_in.contiguous();
  auto p = weight_params(exponents, mu, sigma, sigma_tensor, stack.size(2));
  SampleCheck check{max_sample};
  if (max_sample > 0) p.check = &check;
  const auto cv = conventions_from(codes, reals);
  at::Tensor out = at::empty({stack.size(0), stack.size(1), 1, stack.size(3), stack.size(4)}, stack.options());
  if (stack.scalar_type() == at::kFloat)
    weights_into<float>(stack, out, p, cv);
  else
    weights_into<double>(stack, out, p, cv);
  refuse_bad_samples(p);
  return out;
}

at::Tensor weights_op(const at::Tensor& stack_in, at::ArrayRef<double> exponents, at::ArrayRef<double> mu,
                      at::ArrayRef<double> sigma, bool sigma_tensor, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  CallThreads threads;
  return checked_weights(stack_in, exponents, mu, sigma, sigma_tensor, reals, codes, 0.0);
}

// blend_op's work; its weights handle is dropped before the collapse, so that fuse_op's weights,
// handed over, are freed then
at::Tensor blend_run(const at::Tensor& stack_in, at::Tensor weights_in, at::ArrayRef<double> band,
                     at::ArrayRef<double> residual, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  check_stack(stack_in, "stack");
  check_stack(weights_in, "weights");
  TORCH_CHECK(weights_in.scalar_type() == stack_in.scalar_type(), "efusion_native: weights and stack differ in dtype");
  const at::Tensor stack = stack_in.contiguous();
  at::Tensor weights = weights_in.contiguous();
  weights_in = at::Tensor();
  TORCH_CHECK(weights.size(0) == stack.size(0) && weights.size(1) == stack.size(1) && weights.size(2) == 1 &&
                  weights.size(3) == stack.size(3) && weights.size(4) == stack.size(4),
              "efusion_native: weights must be [B, N, 1, H, W] of the stack's, got ", weights.sizes());
  const auto cv = conventions_from(codes, reals);
  if (stack.scalar_type() == at::kFloat)
    return blend_impl<float>(stack, std::move(weights), band.vec(), residual.vec(), cv);
  return blend_impl<double>(stack, std::move(weights), band.vec(), residual.vec(), cv);
}

at::Tensor blend_op(const at::Tensor& stack_in, const at::Tensor& weights_in, at::ArrayRef<double> band,
                    at::ArrayRef<double> residual, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  CallThreads threads;
  return blend_run(stack_in, weights_in, band, residual, reals, codes);
}

// streaming (efusion.fuse_frames): raw weights of one frame, then frames added one at a time into
// the blended pyramid held by Python as a list of tensors (bands then residuals per level; an empty
// tensor where the depth plan has no such term), then the collapse
at::Tensor raw_weights_op(const at::Tensor& frame_in, at::ArrayRef<double> exponents, at::ArrayRef<double> mu,
                          at::ArrayRef<double> sigma, bool sigma_tensor, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  CallThreads threads;
  TORCH_CHECK(frame_in.dim() == 4, "efusion_native: frame must be [B, C, H, W], got ", frame_in.sizes());
  const at::Tensor frame = frame_in.contiguous().unsqueeze(1);
  check_stack(frame, "frame");
  const auto p = weight_params(exponents, mu, sigma, sigma_tensor, frame.size(2));
  const auto cv = conventions_from(codes, reals);
  at::Tensor out = at::empty({frame.size(0), 1, 1, frame.size(3), frame.size(4)}, frame.options());
  if (frame.scalar_type() == at::kFloat)
    weights_into<float>(frame, out, p, cv, false);
  else
    weights_into<double>(frame, out, p, cv, false);
  return out.squeeze(1);
}

Blend blend_state(at::TensorList acc, const at::Tensor& like, int64_t channels, int64_t height, int64_t width,
                  at::ArrayRef<double> band, at::ArrayRef<double> residual, bool scratch) {
  const int64_t top = int64_t(band.size());
  TORCH_CHECK(int64_t(acc.size()) == 2 * top, "efusion_native: ", 2 * top, " accumulators expected, got ", acc.size());
  Blend s = make_blend(like.size(0), channels, height, width, band.vec(), residual.vec(), like.options(), false);
  for (int64_t l = 0; l < top; ++l) {
    const Level lv = s.levels[l];
    for (int k = 0; k < 2; ++k) {
      const at::Tensor& t = acc[k * top + l];
      const bool wanted = k == 0 ? (l < top - 1 && band[l] != 0) : residual[l] != 0;
      TORCH_CHECK(wanted == (t.numel() > 0), "efusion_native: accumulator ", k * top + l, " does not match the depth plan");
      if (!wanted) continue;
      TORCH_CHECK(t.is_contiguous() && t.scalar_type() == like.scalar_type() &&
                      t.sizes() == at::IntArrayRef({like.size(0), channels, lv.h, lv.w}),
                  "efusion_native: accumulator ", k * top + l, " has the wrong shape or dtype: ", t.sizes());
      (k == 0 ? s.bands : s.residuals)[l] = t;
    }
    if (!scratch) {
      s.images[l] = at::Tensor();
      s.masks[l] = at::Tensor();
    }
  }
  return s;
}

void blend_add_op(at::TensorList acc, const at::Tensor& frame_in, const at::Tensor& weight_in, at::ArrayRef<double> band,
                  at::ArrayRef<double> residual, bool first, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  CallThreads threads;
  TORCH_CHECK(frame_in.dim() == 4 && weight_in.dim() == 4 && weight_in.size(1) == 1,
              "efusion_native: frame [B, C, H, W] and weight [B, 1, H, W] expected, got ", frame_in.sizes(), " and ",
              weight_in.sizes());
  check_stack(frame_in.unsqueeze(1), "frame");
  TORCH_CHECK(weight_in.scalar_type() == frame_in.scalar_type(), "efusion_native: weight and frame differ in dtype");
  const at::Tensor frame = frame_in.contiguous(), weight = weight_in.contiguous();
  const int64_t channels = frame.size(1), height = frame.size(2), width = frame.size(3);
  Blend s = blend_state(acc, frame, channels, height, width, band, residual, true);
  const auto cv = conventions_from(codes, reals);
  if (frame.scalar_type() == at::kFloat)
    blend_add<float>(s, frame.data_ptr<float>(), channels * height * width, weight.data_ptr<float>(), height * width, first, cv);
  else
    blend_add<double>(s, frame.data_ptr<double>(), channels * height * width, weight.data_ptr<double>(), height * width,
                      first, cv);
}

at::Tensor blend_collapse_op(at::TensorList acc, const at::Tensor& like, at::ArrayRef<double> band,
                             at::ArrayRef<double> residual, at::ArrayRef<double> reals, at::IntArrayRef codes) {
  CallThreads threads;
  TORCH_CHECK(like.dim() == 4, "efusion_native: like must be a frame [B, C, H, W], got ", like.sizes());
  Blend s = blend_state(acc, like, like.size(1), like.size(2), like.size(3), band, residual, false);
  const auto cv = conventions_from(codes, reals);
  if (like.scalar_type() == at::kFloat) return blend_collapse<float>(s, cv, like.options());
  return blend_collapse<double>(s, cv, like.options());
}

at::Tensor fuse_op(const at::Tensor& stack_in, at::ArrayRef<double> exponents, at::ArrayRef<double> mu,
                   at::ArrayRef<double> sigma, bool sigma_tensor, at::ArrayRef<double> reals, at::ArrayRef<double> band,
                   at::ArrayRef<double> residual, at::IntArrayRef codes, double max_sample) {
  CallThreads threads;
  at::Tensor weights = checked_weights(stack_in, exponents, mu, sigma, sigma_tensor, reals, codes, max_sample);
  return blend_run(stack_in, std::move(weights), band, residual, reals, codes);
}

// fuse without the N weight planes (fuse_two_pass): the same result, memory flat in N
at::Tensor fuse_two_pass_op(const at::Tensor& stack_in, at::ArrayRef<double> exponents, at::ArrayRef<double> mu,
                            at::ArrayRef<double> sigma, bool sigma_tensor, at::ArrayRef<double> reals,
                            at::ArrayRef<double> band, at::ArrayRef<double> residual, at::IntArrayRef codes,
                            double max_sample) {
  CallThreads threads;
  check_stack(stack_in, "stack");
  const at::Tensor stack = stack_in.contiguous();
  auto p = weight_params(exponents, mu, sigma, sigma_tensor, stack.size(2));
  SampleCheck check{max_sample};
  if (max_sample > 0) p.check = &check;
  const auto cv = conventions_from(codes, reals);
  if (stack.scalar_type() == at::kFloat) return fuse_two_pass<float>(stack, p, band.vec(), residual.vec(), cv);
  return fuse_two_pass<double>(stack, p, band.vec(), residual.vec(), cv);
}

// ---------------------------------------------------------------------------------------------
// fill_masked (efusion.reference.masks.fill_masked): each frame with a hole is filled by push-pull
// (its masked image and mask down the Gaussian pyramid, each level's image divided by its mask
// where that is > 0, holes taking the upsampled coarser level); frames without a hole are copied.
// The reference's operations in its order (pyr_down: columns then rows; pyr_up: rows then columns,
// as the blend's), hence its bits.

template <typename T>
at::Tensor fill_masked_impl(const at::Tensor& stack, const at::Tensor& valid_in, const Conventions& cv) {
  const int64_t frames = stack.size(0), channels = stack.size(1), height = stack.size(2), width = stack.size(3);
  const int64_t plane = height * width;
  at::Tensor out = stack.clone();
  const at::Tensor valid = valid_in.contiguous();
  const T* x = stack.data_ptr<T>();
  const T* v = valid.data_ptr<T>();
  std::vector<int64_t> holes;  // the frames with a masked pixel
  for (int64_t m = 0; m < frames; ++m) {
    const T* vm = v + m * plane;
    if (std::any_of(vm, vm + plane, [](T a) { return !(a > T(0)); })) holes.push_back(m);
  }
  if (holes.empty()) return out;
  const int64_t count = int64_t(holes.size()), planes = channels + 1;  // the image's channels and the mask
  std::vector<Level> levels{{height, width}};
  while (levels.back().h > 1 || levels.back().w > 1) levels.push_back({(levels.back().h + 1) / 2, (levels.back().w + 1) / 2});
  const int64_t top = int64_t(levels.size());
  // level l of frame k: planes [k][0..C-1] the masked image, [k][C] the mask
  std::vector<at::Tensor> pyramid(static_cast<size_t>(top));
  for (int64_t l = 0; l < top; ++l) pyramid[l] = at::empty({count, planes, levels[l].h, levels[l].w}, stack.options());
  T* base = pyramid[0].data_ptr<T>();
  at::parallel_for(0, count * height, grain_rows(width * planes), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = i / height, row = i % height;
      const T* vr = v + holes[k] * plane + row * width;
      for (int64_t c = 0; c < channels; ++c) {
        const T* xr = x + (holes[k] * channels + c) * plane + row * width;
        T* o = base + (k * planes + c) * plane + row * width;
        for (int64_t q = 0; q < width; ++q) o[q] = vr[q] > T(0) ? xr[q] : T(0);
      }
      T* o = base + (k * planes + channels) * plane + row * width;
      for (int64_t q = 0; q < width; ++q) o[q] = vr[q] > T(0) ? T(1) : T(0);
    }
  });
  // down: every plane filtered along its rows into `across` ([planes, h, w'] at the coarse width), then along columns
  for (int64_t l = 0; l + 1 < top; ++l) {
    const Level fl = levels[l], cl = levels[l + 1];
    const T* fine = pyramid[l].data_ptr<T>();
    T* coarse = pyramid[l + 1].data_ptr<T>();
    at::Tensor across_t = at::empty({count * planes, fl.h, cl.w}, stack.options());
    T* across = across_t.data_ptr<T>();
    at::parallel_for(0, count * planes * fl.h, grain_rows(fl.w), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) down_row(fine + i * fl.w, fl.w, cv.down_border, across + i * cl.w);
    });
    at::parallel_for(0, count * planes * cl.h, grain_rows(cl.w * 5), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t p = i / cl.h, j = i % cl.h;
        const T* in = across + p * fl.h * cl.w;
        const T* r[5];
        for (int k = 0; k < 5; ++k) r[k] = in + border_index(2 * j + k - 2, fl.h, cv.down_border) * cl.w;
        T* o = coarse + (p * cl.h + j) * cl.w;
        for (int64_t q = 0; q < cl.w; ++q) o[q] = down_tap(r[0][q], r[1][q], r[2][q], r[3][q], r[4][q]);
      }
    });
  }
  // pull, from the top level down: each level's image / mask where the mask is > 0, elsewhere the
  // upsampled coarser filled level (0 at the top level)
  at::Tensor filled;
  for (int64_t l = top - 1; l >= 0; --l) {
    const Level fl = levels[l], cl = l + 1 < top ? levels[l + 1] : Level{0, 0};
    at::Tensor next = at::empty({count, channels, fl.h, fl.w}, stack.options());
    const T* coarse = filled.defined() ? filled.data_ptr<T>() : nullptr;
    const T* src = pyramid[l].data_ptr<T>();
    T* f = next.data_ptr<T>();
    const int64_t fn = fl.h * fl.w;
    at::parallel_for(0, count * channels * fl.h, grain_rows(fl.w * 2), [&](int64_t i0, int64_t i1) {
      std::vector<T> vertical(static_cast<size_t>(cl.w)), up(static_cast<size_t>(fl.w), T(0));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t row = i % fl.h, kc = i / fl.h, k = kc / channels, c = kc % channels;
        if (coarse != nullptr) up_fine_row(coarse + kc * cl.h * cl.w, cl.h, cl.w, row, fl.w, cv, vertical.data(), up.data());
        const T* img = src + (k * planes + c) * fn + row * fl.w;
        const T* w = src + (k * planes + channels) * fn + row * fl.w;
        T* o = f + kc * fn + row * fl.w;
        for (int64_t q = 0; q < fl.w; ++q) o[q] = w[q] > T(0) ? img[q] / w[q] : up[q];
      }
    });
    filled = next;
  }
  // the frame keeps its own values where valid
  T* o = out.data_ptr<T>();
  const T* f = filled.data_ptr<T>();
  at::parallel_for(0, count * channels * height, grain_rows(width), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t row = i % height, kc = i / height, k = kc / channels, c = kc % channels;
      const T* vr = v + holes[k] * plane + row * width;
      T* dst = o + (holes[k] * channels + c) * plane + row * width;
      const T* fr = f + kc * plane + row * width;
      for (int64_t q = 0; q < width; ++q) dst[q] = vr[q] > T(0) ? dst[q] : fr[q];
    }
  });
  return out;
}

at::Tensor fill_masked_op(const at::Tensor& stack_in, const at::Tensor& valid_in, at::ArrayRef<double> reals,
                          at::IntArrayRef codes) {
  CallThreads threads;
  TORCH_CHECK(stack_in.dim() == 4, "efusion_native: stack must be [M, C, H, W], got ", stack_in.sizes());
  check_stack(stack_in.unsqueeze(0), "stack");
  TORCH_CHECK(valid_in.dim() == 4 && valid_in.size(0) == stack_in.size(0) && valid_in.size(1) == 1 &&
                  valid_in.size(2) == stack_in.size(2) && valid_in.size(3) == stack_in.size(3),
              "efusion_native: mask must be [M, 1, H, W] for a stack ", stack_in.sizes(), ", got ", valid_in.sizes());
  TORCH_CHECK(valid_in.scalar_type() == stack_in.scalar_type(), "efusion_native: mask must have the stack's dtype");
  const at::Tensor stack = stack_in.contiguous();
  const auto cv = conventions_from(codes, reals);
  if (stack.scalar_type() == at::kFloat) return fill_masked_impl<float>(stack, valid_in, cv);
  return fill_masked_impl<double>(stack, valid_in, cv);
}

}  // namespace

TORCH_LIBRARY(efusion_native, m) {
  // conventions: the preset's codes, reals: its luma weights, flat contrast and integer grid (see conventions() in
  // efusion/backends/native/__init__.py)
  m.def("weights(Tensor stack, float[] exponents, float[] mu, float[] sigma, bool sigma_tensor, float[] reals, "
        "int[] conventions) -> Tensor");
  m.def("blend(Tensor stack, Tensor weights, float[] band, float[] residual, float[] reals, int[] conventions) -> Tensor");
  m.def("raw_weights(Tensor frame, float[] exponents, float[] mu, float[] sigma, bool sigma_tensor, float[] reals, "
        "int[] conventions) -> Tensor");
  m.def("blend_add(Tensor(a!)[] accumulators, Tensor frame, Tensor weight, float[] band, float[] residual, bool first, "
        "float[] reals, int[] conventions) -> ()");
  m.def("blend_collapse(Tensor[] accumulators, Tensor like, float[] band, float[] residual, float[] reals, "
        "int[] conventions) -> Tensor");
  // max_sample > 0: samples that are NaN, -inf or above it are refused (efusion._checks.check_samples)
  m.def("fuse(Tensor stack, float[] exponents, float[] mu, float[] sigma, bool sigma_tensor, float[] reals, "
        "float[] band, float[] residual, int[] conventions, float max_sample=0.) -> Tensor");
  m.def("fuse_two_pass(Tensor stack, float[] exponents, float[] mu, float[] sigma, bool sigma_tensor, float[] reals, "
        "float[] band, float[] residual, int[] conventions, float max_sample=0.) -> Tensor");
  m.def("fill_masked(Tensor stack, Tensor mask, float[] reals, int[] conventions) -> Tensor");
  // the thread count the operators would use if called now, and its rule (diagnostics and tests)
  m.def("call_threads() -> int", [] { return int64_t(call_threads()); });
  m.def("threads_for(int online, int running, int ours, int wanted) -> int",
        [](int64_t online, int64_t running, int64_t ours, int64_t wanted) {
          return int64_t(threads_for(int(online), int(running), int(ours), int(wanted)));
        });
}

TORCH_LIBRARY_IMPL(efusion_native, CPU, m) {
  m.impl("weights", &weights_op);
  m.impl("blend", &blend_op);
  m.impl("fuse", &fuse_op);
  m.impl("fuse_two_pass", &fuse_two_pass_op);
  m.impl("fill_masked", &fill_masked_op);
  m.impl("raw_weights", &raw_weights_op);
  m.impl("blend_add", &blend_add_op);
  m.impl("blend_collapse", &blend_collapse_op);
}

// ---------------------------------------------------------------------------------------------
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <tuple>
#include <utility>

// ---------------------------------------------------------------------------------------------
// backward (issue 13): the gradient of fuse with respect to the stack and the five weight
// parameters, for efusion_native::fusion's registered autograd (efusion/backends/native/__init__.py).
// The same mathematics as the "cpu" backend's hand-written backward (efusion/backends/cpu/blend.py
// BlendFunction, weights.py WeightsBackward), with the reference's conventions at the kinks (0
// where a measure is 0). It reads what the forward kept (fusion's extra outputs: the normalised
// weights, the measures' product and the normaliser) instead of computing the measures again, and
// recomputes only each frame's Gaussian levels. Gradients need not equal any bits: the pyramid
// operators and their adjoints are applied as separable sparse 1-D matrices, one at::parallel_for
// per pass over a level.
namespace {

// a 1-D linear map as rows: output i = sum over k in [start[i], start[i + 1]) of weight[k] * input[index[k]]
// Away from the borders every map here is one of two stencils times a scale: DECIMATE (output j
// reads 2j-2..2j+2 with taps 1 4 6 4 1 / 16: pyr_down, and U^T = 2 of it) or INTERPOLATE (output
// 2i reads i-1, i, i+1 with 1/8 3/4 1/8, output 2i+1 reads i, i+1 with 1/2 1/2: pyr_up, and D^T =
// 1/2 of it); outputs [lo, hi) are known to match it (checked against the rows), the rest use the rows.
enum class Stencil { NONE, DECIMATE, INTERPOLATE };

struct Axis {
  std::vector<int64_t> start, index;
  std::vector<double> weight;
  int64_t inputs = 0;
  Stencil stencil = Stencil::NONE;
  double scale = 1.0;
  int64_t lo = 0, hi = 0;
  int64_t outputs() const { return int64_t(start.size()) - 1; }
};

// whether row o of the map equals the stencil's row (duplicate indices merged, all in range); no
// heap allocation (it runs for every row of every map of a call: small calls felt it)
bool row_matches(const Axis& a, int64_t o, Stencil stencil, double scale) {
  std::array<std::pair<int64_t, double>, 5> want{}, have{};
  size_t wanted = 0, had = 0;
  if (stencil == Stencil::DECIMATE) {
    const double taps[5] = {1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16};
    for (int k = 0; k < 5; ++k) want[wanted++] = {2 * o + k - 2, scale * taps[k]};
  } else if (o % 2 == 0) {
    want[wanted++] = {o / 2 - 1, scale * 0.125};
    want[wanted++] = {o / 2, scale * 0.75};
    want[wanted++] = {o / 2 + 1, scale * 0.125};
  } else {
    want[wanted++] = {o / 2, scale * 0.5};
    want[wanted++] = {o / 2 + 1, scale * 0.5};
  }
  for (int64_t k = a.start[o]; k < a.start[o + 1]; ++k) {
    bool merged = false;
    for (size_t j = 0; j < had; ++j)
      if (have[j].first == a.index[k]) {
        have[j].second += a.weight[k];
        merged = true;
      }
    if (merged) continue;
    if (had == have.size()) return false;  // more distinct inputs than any stencil row has
    have[had++] = {a.index[k], a.weight[k]};
  }
  if (had != wanted) return false;
  std::sort(have.begin(), have.begin() + had);
  for (size_t k = 0; k < wanted; ++k)
    if (want[k].first < 0 || want[k].first >= a.inputs || have[k].first != want[k].first ||
        have[k].second != want[k].second)
      return false;
  return true;
}

// mark the longest run of outputs that match the stencil as the fast interior
Axis with_stencil(Axis a, Stencil stencil, double scale) {
  int64_t best_lo = 0, best_hi = 0;
  for (int64_t o = 0; o < a.outputs();) {
    if (!row_matches(a, o, stencil, scale)) {
      ++o;
      continue;
    }
    int64_t end = o;
    while (end < a.outputs() && row_matches(a, end, stencil, scale)) ++end;
    if (end - o > best_hi - best_lo) best_lo = o, best_hi = end;
    o = end;
  }
  a.stencil = stencil;
  a.scale = scale;
  a.lo = best_lo;
  a.hi = best_hi;
  return a;
}

// out[0..outputs) = the map applied to in[0..inputs)
template <typename T>
void apply_axis(const Axis& a, const T* in, T* out) {
  auto by_rows = [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      T v = T(0);
      for (int64_t k = a.start[o]; k < a.start[o + 1]; ++k) v += T(a.weight[k]) * in[a.index[k]];
      out[o] = v;
    }
  };
  by_rows(0, a.lo);
  by_rows(a.hi, a.outputs());
  const T s = T(a.scale);
  if (a.stencil == Stencil::DECIMATE) {
    const T t0 = s * T(0.0625), t1 = s * T(0.25), t2 = s * T(0.375);
    for (int64_t j = a.lo; j < a.hi; ++j) {
      const T* m = in + 2 * j - 2;
      out[j] = (t0 * (m[0] + m[4]) + t1 * (m[1] + m[3])) + t2 * m[2];
    }
  } else if (a.stencil == Stencil::INTERPOLATE) {
    const T edge = s * T(0.125), centre = s * T(0.75), half = s * T(0.5);
    for (int64_t f = a.lo + (a.lo % 2); f < a.hi; f += 2) {
      const int64_t i = f / 2;
      out[f] = edge * (in[i - 1] + in[i + 1]) + centre * in[i];
    }
    for (int64_t f = a.lo + 1 - (a.lo % 2); f < a.hi; f += 2) {
      const int64_t i = f / 2;
      out[f] = half * (in[i] + in[i + 1]);
    }
  } else {
    by_rows(a.lo, a.hi);
  }
}

// pyr_down along an axis of n samples (down_row's taps and borders): ceil(n / 2) outputs
Axis down_axis(int64_t n, int64_t mode) {
  static const double taps[5] = {0.0625, 0.25, 0.375, 0.25, 0.0625};
  Axis a;
  a.inputs = n;
  a.start.push_back(0);
  for (int64_t j = 0; j < (n + 1) / 2; ++j) {
    for (int k = 0; k < 5; ++k) {
      a.index.push_back(border_index(2 * j + k - 2, n, mode));
      a.weight.push_back(taps[k]);
    }
    a.start.push_back(int64_t(a.index.size()));
  }
  return a;
}

// pyr_up from m coarse samples to n fine ones (up_row's and up_fine_row's taps and borders)
Axis up_axis(int64_t m, int64_t n, int64_t left, int64_t right) {
  Axis a;
  a.inputs = m;
  a.start.push_back(0);
  for (int64_t f = 0; f < n; ++f) {
    const int64_t i = f / 2;
    const int64_t after = border_index(i + 1, m, right);
    if (f % 2 == 0) {
      a.index.insert(a.index.end(), {border_index(i - 1, m, i - 1 < 0 ? left : right), i, after});
      a.weight.insert(a.weight.end(), {0.125, 0.75, 0.125});
    } else {
      a.index.insert(a.index.end(), {i, after});
      a.weight.insert(a.weight.end(), {0.5, 0.5});
    }
    a.start.push_back(int64_t(a.index.size()));
  }
  return a;
}

// the adjoint (transpose) of a 1-D map
Axis transpose(const Axis& a) {
  Axis t;
  t.inputs = a.outputs();
  std::vector<int64_t> count(static_cast<size_t>(a.inputs + 1), 0);
  for (int64_t idx : a.index) ++count[idx + 1];
  for (int64_t i = 0; i < a.inputs; ++i) count[i + 1] += count[i];
  t.start = count;
  t.index.resize(a.index.size());
  t.weight.resize(a.weight.size());
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t o = 0; o < a.outputs(); ++o)
    for (int64_t k = a.start[o]; k < a.start[o + 1]; ++k) {
      const int64_t slot = fill[a.index[k]]++;
      t.index[slot] = o;
      t.weight[slot] = a.weight[k];
    }
  return t;
}

// planes of a [B, P, h, w] layout inside a larger tensor: plane p of item b at base + b * item + p * plane
template <typename T>
struct Planes {
  T* base;
  int64_t per_item, item, plane;
  T* at(int64_t b, int64_t p) const { return base + b * item + p * plane; }
};

template <typename T>
Planes<T> contiguous_planes(at::Tensor& t, int64_t per_item) {
  const int64_t plane = t.size(-2) * t.size(-1);
  return Planes<T>{t.data_ptr<T>(), per_item, per_item * plane, plane};
}

// output row y of (rows (x) cols) applied to the plane `src` (cols.inputs wide): the rows' map
// combines input rows into `mixed`, the columns' map then gives `out` (cols.outputs() samples)
template <typename T>
void separable_row(const T* src, const Axis& rows, const Axis& cols, int64_t y, T* mixed, T* out) {
  const int64_t w_in = cols.inputs;
  for (int64_t k = rows.start[y]; k < rows.start[y + 1]; ++k) {
    const T a = T(rows.weight[k]);
    const T* r = src + rows.index[k] * w_in;
    if (k == rows.start[y])
      for (int64_t x = 0; x < w_in; ++x) mixed[x] = a * r[x];
    else
      for (int64_t x = 0; x < w_in; ++x) mixed[x] += a * r[x];
  }
  apply_axis(cols, mixed, out);
}

// out = (out if add) + alpha * (rows (x) cols) in, plane by plane (batch * per_item planes)
template <typename T>
void apply_separable(const Planes<T>& in, const Planes<T>& out, int64_t batch, const Axis& rows, const Axis& cols,
                     T alpha, bool add) {
  const int64_t per_item = in.per_item, h_out = rows.outputs(), w_in = cols.inputs, w_out = cols.outputs();
  at::parallel_for(0, batch * per_item * h_out, grain_rows(w_in * 3), [&](int64_t i0, int64_t i1) {
    std::vector<T> mixed(static_cast<size_t>(w_in)), row(static_cast<size_t>(w_out));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t y = i % h_out, p = (i / h_out) % per_item, b = i / (h_out * per_item);
      separable_row(in.at(b, p), rows, cols, y, mixed.data(), row.data());
      T* o = out.at(b, p) + y * w_out;
      if (add)
        for (int64_t x = 0; x < w_out; ++x) o[x] += alpha * row[x];
      else
        for (int64_t x = 0; x < w_out; ++x) o[x] = alpha * row[x];
    }
  });
}

// the gradient of the weights' Laplacian (measures.laplacian, 4-neighbour, lap_border) as a gather:
// out[y, x] = sum of the Laplacian rows / columns that read gray sample (y, x), times their taps
template <typename T>
void laplacian_adjoint_row(const T* d, int64_t height, int64_t width, int64_t y, int64_t mode, T* out) {
  const T* mid = d + y * width;
  for (int64_t x = 0; x < width; ++x) out[x] = T(-4.0) * mid[x];
  // vertical taps: row y + 1 reads y as "up", row y - 1 as "down"; rows 0 and H - 1 read the borders
  auto add_row = [&](int64_t r) {
    const T* s = d + r * width;
    for (int64_t x = 0; x < width; ++x) out[x] += s[x];
  };
  if (y + 1 < height) add_row(y + 1);
  if (y - 1 >= 0) add_row(y - 1);
  if (border_index(-1, height, mode) == y) add_row(0);
  if (border_index(height, height, mode) == y) add_row(height - 1);
  for (int64_t x = 0; x < width; ++x) {
    T v = T(0);
    if (x + 1 < width) v += mid[x + 1];
    if (x - 1 >= 0) v += mid[x - 1];
    out[x] += v;
  }
  const int64_t left = border_index(-1, width, mode), right = border_index(width, width, mode);
  out[left] += mid[0];
  out[right] += mid[width - 1];
}

// the gradient of fuse (weights then blend) for the stack, the parameters (contrast, saturation,
// exposure, mu_c, sigma_c) and the depth plan's coefficients (band_l then residual_l), the latter
// two summed in double: d/d band_l = sum g_l B_l, d/d residual_l = sum g_l R_l (the blended levels);
// `normalised`, `product`, `total`: the forward's w, P = C^c S^s E^e and T (efusion_native::fusion)
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> fuse_backward_impl(
    const at::Tensor& grad_in, const at::Tensor& stack, const at::Tensor& normalised, const at::Tensor& product,
    const at::Tensor& total,
    const WeightParams& p, const Conventions& cv,
    const std::vector<double>& band_coef, const std::vector<double>& residual_coef, bool stack_grad,
    bool parameter_grad, bool plan_grad) {
  const int64_t batch = stack.size(0), frames = stack.size(1), channels = stack.size(2);
  const int64_t height = stack.size(3), width = stack.size(4), plane = height * width;
  const int64_t top = int64_t(band_coef.size());
  TORCH_CHECK(top >= 1 && int64_t(residual_coef.size()) == top, "efusion_native: bad depth plan");
  const auto options = stack.options();
  at::Tensor grad = grad_in.contiguous();
  const T* x_data = stack.data_ptr<T>();

  // pyramid geometry and the 1-D maps of each level
  std::vector<Level> levels{{height, width}};
  for (int64_t l = 1; l < top; ++l) levels.push_back({(levels.back().h + 1) / 2, (levels.back().w + 1) / 2});
  std::vector<Axis> down_h, down_w, up_h, up_w, down_ht, down_wt, up_ht, up_wt;
  for (int64_t l = 0; l + 1 < top; ++l) {
    const Level f = levels[l], c = levels[l + 1];
    down_h.push_back(with_stencil(down_axis(f.h, cv.down_border), Stencil::DECIMATE, 1.0));
    down_w.push_back(with_stencil(down_axis(f.w, cv.down_border), Stencil::DECIMATE, 1.0));
    up_h.push_back(with_stencil(up_axis(c.h, f.h, cv.up_left, cv.up_right), Stencil::INTERPOLATE, 1.0));
    up_w.push_back(with_stencil(up_axis(c.w, f.w, cv.up_left, cv.up_right), Stencil::INTERPOLATE, 1.0));
    down_ht.push_back(with_stencil(transpose(down_h.back()), Stencil::INTERPOLATE, 0.5));
    down_wt.push_back(with_stencil(transpose(down_w.back()), Stencil::INTERPOLATE, 0.5));
    up_ht.push_back(with_stencil(transpose(up_h.back()), Stencil::DECIMATE, 2.0));
    up_wt.push_back(with_stencil(transpose(up_w.back()), Stencil::DECIMATE, 2.0));
  }
  auto level_tensor = [&](int64_t l, int64_t planes) { return at::empty({batch, planes, levels[l].h, levels[l].w}, options); };

  // g_l: the gradient of blended level l (g_{l+1} = U^T g_l)
  std::vector<at::Tensor> g{grad};
  for (int64_t l = 0; l + 1 < top; ++l) {
    g.push_back(level_tensor(l + 1, channels));
    apply_separable<T>(contiguous_planes<T>(g[l], channels), contiguous_planes<T>(g[l + 1], channels), batch, up_ht[l],
                       up_wt[l], T(1), false);
  }

  at::Tensor grad_stack = stack_grad ? at::empty_like(stack) : at::Tensor();
  at::Tensor weight_grad = at::empty_like(normalised);  // dL/dw, then Q = dL/dW P
  const bool weights_grad = stack_grad || parameter_grad;  // the weights' gradient h is wanted
  std::vector<at::Tensor> images(top), weights(top), h(top), q(top);
  for (int64_t l = 1; l < top; ++l) {
    images[l] = level_tensor(l, channels);
    weights[l] = level_tensor(l, 1);
    if (weights_grad) h[l] = level_tensor(l, 1);
    if (stack_grad) q[l] = level_tensor(l, channels);
  }
  // a term's coefficient may be 0 and still want its gradient (a tensor depth at a whole level)
  auto band_term = [&](int64_t l) { return l + 1 < top && (band_coef[l] != 0 || plan_grad); };
  // per level, per row of the level: sum g w (G - U G') and sum g w G, summed over frames
  std::vector<std::vector<double>> plan_rows(static_cast<size_t>(top));
  if (plan_grad)
    for (int64_t l = 0; l < top; ++l) plan_rows[l].assign(static_cast<size_t>(batch * levels[l].h * 2), 0.0);

  for (int64_t n = 0; n < frames; ++n) {
    // this frame's level-0 image, weights, h_0 and q_0 inside the [B, N, ...] tensors
    const Planes<T> image0{const_cast<T*>(x_data) + n * channels * plane, channels, frames * channels * plane, plane};
    const Planes<T> weight0{normalised.data_ptr<T>() + n * plane, 1, frames * plane, plane};
    const Planes<T> h0{weight_grad.data_ptr<T>() + n * plane, 1, frames * plane, plane};
    const Planes<T> q0{stack_grad ? grad_stack.data_ptr<T>() + n * channels * plane : nullptr, channels,
                       frames * channels * plane, plane};
    auto image_at = [&](int64_t l) { return l == 0 ? image0 : contiguous_planes<T>(images[l], channels); };
    auto weight_at = [&](int64_t l) { return l == 0 ? weight0 : contiguous_planes<T>(weights[l], 1); };
    auto h_at = [&](int64_t l) { return l == 0 || !weights_grad ? h0 : contiguous_planes<T>(h[l], 1); };
    auto q_at = [&](int64_t l) { return l == 0 || !stack_grad ? q0 : contiguous_planes<T>(q[l], channels); };
    for (int64_t l = 0; l + 1 < top; ++l) {  // the frame's Gaussian pyramids
      apply_separable<T>(image_at(l), image_at(l + 1), batch, down_h[l], down_w[l], T(1), false);
      apply_separable<T>(weight_at(l), weight_at(l + 1), batch, down_h[l], down_w[l], T(1), false);
    }
    for (int64_t l = top - 1; l >= 0; --l) {
      const bool below = l + 1 < top;  // a coarser level, whose gradients come down to this one
      const bool has_band = below && band_coef[l] != 0, has_residual = residual_coef[l] != 0;
      const bool upsample = band_term(l) && (weights_grad || plan_grad);
      const T bc = T(band_coef[l]), rc = T(residual_coef[l]);
      const Level lv = levels[l], cl = below ? levels[l + 1] : Level{0, 0};
      const Planes<T> image = image_at(l), weight = weight_at(l), hl = h_at(l), ql = q_at(l);
      const Planes<T> gl = contiguous_planes<T>(g[l], channels);
      const T* coarse = upsample ? images[l + 1].data_ptr<T>() : nullptr;
      double* plan_sums = plan_grad ? plan_rows[l].data() : nullptr;
      if (stack_grad && has_band) {
        // G_{l+1}'s share of the band: q_{l+1} -= U^T (band w g), the band rows computed as U^T reads them
        const Planes<T> coarse_q = q_at(l + 1);
        const Axis &rows = up_ht[l], &cols = up_wt[l];
        at::parallel_for(0, batch * cl.h, grain_rows(lv.w * channels * 3), [&](int64_t i0, int64_t i1) {
          std::vector<T> mixed(static_cast<size_t>(lv.w)), out(static_cast<size_t>(cl.w));
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / cl.h, y = i % cl.h;
            for (int64_t c = 0; c < channels; ++c) {
              for (int64_t k = rows.start[y]; k < rows.start[y + 1]; ++k) {
                const T a = T(rows.weight[k]);
                const T* ww = weight.at(b, 0) + rows.index[k] * lv.w;
                const T* gg = gl.at(b, c) + rows.index[k] * lv.w;
                if (k == rows.start[y])
                  for (int64_t x = 0; x < lv.w; ++x) mixed[x] = a * (bc * (ww[x] * gg[x]));
                else
                  for (int64_t x = 0; x < lv.w; ++x) mixed[x] += a * (bc * (ww[x] * gg[x]));
              }
              apply_axis(cols, mixed.data(), out.data());
              T* o = coarse_q.at(b, c) + y * cl.w;
              for (int64_t x = 0; x < cl.w; ++x) o[x] += T(-1) * out[x];
            }
          }
        });
      }
      // one pass over the level's rows, each written once: U G' (the forward's up rows), h_l = sum_c g
      // (band (G - U G') + residual G) + D^T h_{l+1}, q_l = (band + residual) w g + D^T q_{l+1}, the
      // plan's sums
      const Planes<T> coarse_h = below && weights_grad ? h_at(l + 1) : hl;
      const Planes<T> coarse_q = below && stack_grad ? q_at(l + 1) : ql;
      at::parallel_for(0, batch * lv.h, grain_rows(lv.w * channels * 4), [&](int64_t i0, int64_t i1) {
        std::vector<T> vertical(static_cast<size_t>(cl.w)), up(static_cast<size_t>(upsample ? lv.w : 0));
        std::vector<T> mixed(static_cast<size_t>(cl.w)), down_t(static_cast<size_t>(below ? lv.w : 0));
        // the plan's sums element by element (vectorised), added up at the row's end
        std::vector<double> band_acc(plan_sums ? static_cast<size_t>(lv.w) : 0), residual_acc(band_acc.size());
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t b = i / lv.h, row = i % lv.h, off = row * lv.w;
          T* hh = weights_grad ? hl.at(b, 0) + off : nullptr;
          const T* ww = weight.at(b, 0) + off;
          if (hh) std::fill(hh, hh + lv.w, T(0));
          if (plan_sums) {
            std::fill(band_acc.begin(), band_acc.end(), 0.0);
            std::fill(residual_acc.begin(), residual_acc.end(), 0.0);
          }
          for (int64_t c = 0; c < channels; ++c) {
            const T* xx = image.at(b, c) + off;
            const T* gg = gl.at(b, c) + off;
            if (upsample)
              up_fine_row(coarse + (b * channels + c) * cl.h * cl.w, cl.h, cl.w, row, lv.w, cv, vertical.data(),
                          up.data());
            const T* uu = up.data();
            if (hh) {
              if (has_band && has_residual)
                for (int64_t k = 0; k < lv.w; ++k) hh[k] += gg[k] * (bc * (xx[k] - uu[k]) + rc * xx[k]);
              else if (has_band)
                for (int64_t k = 0; k < lv.w; ++k) hh[k] += gg[k] * (bc * (xx[k] - uu[k]));
              else if (has_residual)
                for (int64_t k = 0; k < lv.w; ++k) hh[k] += gg[k] * (rc * xx[k]);
            }
            if (plan_sums) {
              double *ba = band_acc.data(), *ra = residual_acc.data();
              if (upsample)
                for (int64_t k = 0; k < lv.w; ++k) ba[k] += double(gg[k]) * double(ww[k]) * double(xx[k] - uu[k]);
              for (int64_t k = 0; k < lv.w; ++k) ra[k] += double(gg[k]) * double(ww[k]) * double(xx[k]);
            }
            if (stack_grad) {
              T* qq = ql.at(b, c) + off;
              const T scale = (has_band ? bc : T(0)) + (has_residual ? rc : T(0));
              if (below) {
                separable_row(coarse_q.at(b, c), down_ht[l], down_wt[l], row, mixed.data(), down_t.data());
                const T* d = down_t.data();
                for (int64_t k = 0; k < lv.w; ++k) qq[k] = scale * (ww[k] * gg[k]) + d[k];
              } else {
                for (int64_t k = 0; k < lv.w; ++k) qq[k] = scale * (ww[k] * gg[k]);
              }
            }
          }
          if (hh && below) {
            separable_row(coarse_h.at(b, 0), down_ht[l], down_wt[l], row, mixed.data(), down_t.data());
            const T* d = down_t.data();
            for (int64_t k = 0; k < lv.w; ++k) hh[k] += d[k];
          }
          if (plan_sums) {
            double band_sum = 0, residual_sum = 0;
            for (int64_t k = 0; k < lv.w; ++k) {
              band_sum += band_acc[k];
              residual_sum += residual_acc[k];
            }
            plan_sums[2 * i] += band_sum;
            plan_sums[2 * i + 1] += residual_sum;
          }
        }
      });
    }
  }

  // the normalisation and the product rule together: Q_n = dL/dW_n P_n, where dL/dW_n = (dL/dw_n -
  // sum_k dL/dw_k w_k) / T and P_n the forward's product; in double (the difference cancels)
  if (weights_grad) {
    T* hg = weight_grad.data_ptr<T>();
    const T* w = normalised.data_ptr<T>();
    const T* pp = product.data_ptr<T>();
    const T* t = total.data_ptr<T>();
    at::parallel_for(0, batch * height, grain_rows(width * frames), [&](int64_t i0, int64_t i1) {
      std::vector<double> dot(static_cast<size_t>(width)), inverse(static_cast<size_t>(width));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / height, off = (i % height) * width;
        std::fill(dot.begin(), dot.end(), 0.0);
        for (int64_t n = 0; n < frames; ++n) {
          const T* hh = hg + (b * frames + n) * plane + off;
          const T* ww = w + (b * frames + n) * plane + off;
          for (int64_t x = 0; x < width; ++x) dot[x] += double(hh[x]) * double(ww[x]);
        }
        const T* tt = t + b * plane + off;
        for (int64_t x = 0; x < width; ++x) inverse[x] = 1.0 / double(tt[x]);
        for (int64_t n = 0; n < frames; ++n) {
          T* hh = hg + (b * frames + n) * plane + off;
          const T* pn = pp + (b * frames + n) * plane + off;
          for (int64_t x = 0; x < width; ++x) hh[x] = T((double(hh[x]) - dot[x]) * inverse[x] * double(pn[x]));
        }
      }
    });
  }

  // the measures: P = C^c S^s E^e (S^s = (S^2)^(s/2), E^e = exp(e log E)), differentiated through Q:
  // d/dc = sum Q log C, d/ds = sum Q log(S^2) / 2, d/de = sum Q log E; the stack through the signed
  // Laplacian L (dP/dL = P c / L), S^2 (dP/d(S^2) = P s / (2 S^2)) and log E (dP/d(log E) = P e), with
  // 1 in place of a measure that is 0 in the logs and 0 for its share of the stack's gradient. P
  // itself is the forward's (in Q): no exp here, logs only for the exponents' gradients.
  const bool use_contrast = p.contrast != 0 || parameter_grad;
  const bool use_saturation = channels == 3 && (p.saturation != 0 || parameter_grad);
  const bool use_exposure = p.exposure != 0 || parameter_grad;
  const int64_t sums = 3 + 2 * channels;
  std::vector<double> row_sums(static_cast<size_t>(batch * height * sums), 0.0);
  // the Laplacian's gradient takes Q's place: the measures pass reads each element of Q at its own
  // place only, before it writes the Laplacian's gradient there
  at::Tensor laplacian_grad = stack_grad && p.contrast != 0 ? weight_grad : at::Tensor();
  if (stack_grad || parameter_grad) {
    const T c_exp = T(p.contrast), s_exp = T(p.saturation), e_exp = T(p.exposure);
    const T flat = std::is_same<T, float>::value ? T(cv.flat_contrast) : T(0);
    const T third = std::is_same<T, float>::value ? T(float(1.0 / 3.0)) : T(1.0 / 3.0);
    const T* qg = weight_grad.data_ptr<T>();
    T* gs = stack_grad ? grad_stack.data_ptr<T>() : nullptr;
    T* lg = laplacian_grad.defined() ? laplacian_grad.data_ptr<T>() : nullptr;
    const bool contrast_log = use_contrast && parameter_grad, saturation_log = use_saturation && parameter_grad;
    const bool exposure_log = use_exposure && parameter_grad;
    const bool need_lap = contrast_log || lg != nullptr;
    const bool need_s2 = saturation_log || (stack_grad && use_saturation && p.saturation != 0);
    const bool exposure_stack = stack_grad && use_exposure && p.exposure != 0;
    const bool saturation_stack = stack_grad && use_saturation && p.saturation != 0;
    const int64_t row_span = frames * width;
    // rows staged together, so that each of torch's vectorised log calls covers enough elements
    const int64_t block = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_span, 1));
    const auto span = static_cast<size_t>(block * row_span);
    at::parallel_for(0, batch * height, grain_rows(width * frames * 4), [&](int64_t i0, int64_t i1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain buffers: no autograd bookkeeping
      // three gray rows per frame, keyed by row index (as the forward's weights_rows)
      std::vector<T> gray(need_lap ? static_cast<size_t>(frames * 3 * (width + 2)) : 0);
      std::vector<int64_t> cached(static_cast<size_t>(frames * 3), -1);
      std::vector<T> lap(need_lap ? span : 0), s2(need_s2 ? span : 0), log_e(exposure_log ? span : 0);
      std::vector<T> log_c(contrast_log ? span : 0), log_s(saturation_log ? span : 0);
      // the parameters' sums of a row element by element (vectorised), added up at the row's end
      std::vector<double> lanes(parameter_grad ? static_cast<size_t>(sums * width) : 0);
      std::vector<double> total_of(static_cast<size_t>(sums));
      int64_t batch_done = -1;
      for (int64_t first = i0; first < i1; first += block) {
        const int64_t last = std::min(i1, first + block), staged = (last - first) * row_span;
        for (int64_t i = first; i < last; ++i) {
          const int64_t b = i / height, row = i % height, off = row * width;
          if (b != batch_done) {
            std::fill(cached.begin(), cached.end(), -1);
            batch_done = b;
          }
          for (int64_t n = 0; n < frames; ++n) {
            const T* frame = x_data + (b * frames + n) * channels * plane;
            const T* x0 = frame + off;
            const int64_t o = (i - first) * row_span + n * width;
            if (need_lap)  // the forward's gray rows and Laplacian, the same operations
              laplacian_row<false>(gray_rows3(frame, n, row, channels, plane, height, width, cv, gray, cached), width,
                                   cv, flat, lap.data() + o);
            if (need_s2) {
              const T *r = x0 + cv.rgb[0] * plane, *gr = x0 + cv.rgb[1] * plane, *bl = x0 + cv.rgb[2] * plane;
              T* s = s2.data() + o;
              if (!cv.sat_opencv) {
                for (int64_t x = 0; x < width; ++x) {
                  const T a = r[x] - gr[x], bb = gr[x] - bl[x], c = bl[x] - r[x];
                  s[x] = ((a * a + bb * bb) + c * c) / T(9.0);
                }
              } else {
                for (int64_t x = 0; x < width; ++x) {
                  const T mean = ((r[x] + gr[x]) + bl[x]) * third;
                  const T a = r[x] - mean, bb = gr[x] - mean, c = bl[x] - mean;
                  s[x] = (a * a + bb * bb) + c * c;
                }
              }
            }
            if (exposure_log) {
              T* e = log_e.data() + o;
              for (int64_t c = 0; c < channels; ++c) {
                const T* ch = x0 + c * plane;
                const T m = T(p.mu[c]), s2c = T(p.sigma[c]) * T(p.sigma[c]);
                if (c == 0)
                  for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] = d * d / s2c; }
                else
                  for (int64_t x = 0; x < width; ++x) { const T d = ch[x] - m; e[x] += d * d / s2c; }
              }
              for (int64_t x = 0; x < width; ++x) e[x] *= T(-0.5);
            }
          }
        }
        // the logs of the measures (1 in place of 0), for the exponents' gradients
        if (contrast_log) {
          for (int64_t x = 0; x < staged; ++x) log_c[x] = lap[x] != T(0) ? std::abs(lap[x]) : T(1);
          torch_unary_(log_c.data(), staged, Unary::LOG);
        }
        if (saturation_log) {
          for (int64_t x = 0; x < staged; ++x) log_s[x] = s2[x] > T(0) ? s2[x] : T(1);
          torch_unary_(log_s.data(), staged, Unary::LOG);
        }
        for (int64_t i = first; i < last; ++i) {
          const int64_t b = i / height, row = i % height, off = row * width, at_row = (i - first) * row_span;
          if (parameter_grad) std::fill(lanes.begin(), lanes.end(), 0.0);
          auto lane = [&](int64_t k) { return lanes.data() + k * width; };
          for (int64_t n = 0; n < frames; ++n) {
            const T* x0 = x_data + (b * frames + n) * channels * plane + off;
            const int64_t o = at_row + n * width;
            const T* qn = qg + (b * frames + n) * plane + off;
            if (parameter_grad) {  // d/dc = sum Q log C, d/ds = sum Q log(S^2) / 2, d/de = sum Q log E
              if (contrast_log) {
                double* a = lane(0);
                const T* lc = log_c.data() + o;
                for (int64_t x = 0; x < width; ++x) a[x] += double(qn[x]) * double(lc[x]);
              }
              if (saturation_log) {
                double* a = lane(1);
                const T* ls = log_s.data() + o;
                for (int64_t x = 0; x < width; ++x) a[x] += double(qn[x]) * double(ls[x]);
              }
              if (exposure_log) {
                double* a = lane(2);
                const T* le = log_e.data() + o;
                for (int64_t x = 0; x < width; ++x) a[x] += double(qn[x]) * double(le[x]);
              }
            }
            if (use_exposure && p.exposure != 0) {  // d/dx_c = -e Q (x_c - mu_c) / sigma_c^2 = -d/dmu_c
              for (int64_t c = 0; c < channels; ++c) {
                const T* ch = x0 + c * plane;
                const T m = T(p.mu[c]), s2c = T(p.sigma[c]) * T(p.sigma[c]);
                if (exposure_stack && !saturation_stack) {  // (with saturation: in its pass below)
                  T* gc = gs + (b * frames + n) * channels * plane + c * plane + off;
                  for (int64_t x = 0; x < width; ++x) gc[x] -= (qn[x] * e_exp) * (ch[x] - m) / s2c;
                }
                if (parameter_grad) {
                  double *am = lane(3 + c), *as = lane(3 + channels + c);
                  for (int64_t x = 0; x < width; ++x) {
                    const double d = double(ch[x] - m), dlog = double(qn[x] * e_exp);
                    am[x] += dlog * d;
                    as[x] += dlog * d * d;
                  }
                }
              }
            }
            if (saturation_stack) {
              // one pass over the three channels' gradients: the exposure's share (as above), then the
              // saturation's, 0 where S^2 is 0 (branch-free, so that the loop vectorises)
              const int64_t ir = cv.rgb[0], ig = cv.rgb[1], ib = cv.rgb[2];
              const T *r = x0 + ir * plane, *gr = x0 + ig * plane, *bl = x0 + ib * plane;
              T* base = gs + (b * frames + n) * channels * plane + off;
              T *out_r = base + ir * plane, *out_g = base + ig * plane, *out_b = base + ib * plane;
              const T* sn = s2.data() + o;
              const T mr = T(p.mu[ir]), mg = T(p.mu[ig]), mb = T(p.mu[ib]);
              const T vr = T(p.sigma[ir]) * T(p.sigma[ir]), vg = T(p.sigma[ig]) * T(p.sigma[ig]),
                      vb = T(p.sigma[ib]) * T(p.sigma[ib]);
              auto pass = [&](auto with_exposure, auto opencv_form) {
                for (int64_t x = 0; x < width; ++x) {
                  T gr_ = out_r[x], gg_ = out_g[x], gb_ = out_b[x];
                  if constexpr (decltype(with_exposure)::value) {
                    const T qe = qn[x] * e_exp;
                    gr_ -= qe * (r[x] - mr) / vr;
                    gg_ -= qe * (gr[x] - mg) / vg;
                    gb_ -= qe * (bl[x] - mb) / vb;
                  }
                  const bool alive = sn[x] > T(0);
                  const T d = alive ? qn[x] * (s_exp * T(0.5)) / (alive ? sn[x] : T(1)) : T(0);
                  if constexpr (!decltype(opencv_form)::value) {
                    const T rg = r[x] - gr[x], gb = gr[x] - bl[x], br = bl[x] - r[x], k = T(2.0 / 9.0) * d;
                    out_r[x] = gr_ + k * (rg - br);
                    out_g[x] = gg_ + k * (gb - rg);
                    out_b[x] = gb_ + k * (br - gb);
                  } else {
                    const T mean = ((r[x] + gr[x]) + bl[x]) * third;
                    const T dr = r[x] - mean, dg = gr[x] - mean, db = bl[x] - mean;
                    const T shared = ((dr + dg) + db) * third;
                    out_r[x] = gr_ + T(2) * d * (dr - shared);
                    out_g[x] = gg_ + T(2) * d * (dg - shared);
                    out_b[x] = gb_ + T(2) * d * (db - shared);
                  }
                }
              };
              if (exposure_stack)
                cv.sat_opencv ? pass(std::true_type{}, std::true_type{}) : pass(std::true_type{}, std::false_type{});
              else
                cv.sat_opencv ? pass(std::false_type{}, std::true_type{}) : pass(std::false_type{}, std::false_type{});
            }
            if (lg) {
              T* l = lg + (b * frames + n) * plane + off;
              const T* ln = lap.data() + o;
              for (int64_t x = 0; x < width; ++x) l[x] = ln[x] != T(0) ? qn[x] * c_exp / ln[x] : T(0);
            }
          }
          if (parameter_grad) {
            double* acc = row_sums.data() + i * sums;
            for (int64_t k = 0; k < sums; ++k) {
              const double* a = lane(k);
              double v = 0;
              for (int64_t x = 0; x < width; ++x) v += a[x];
              total_of[k] = v;
            }
            acc[0] += total_of[0];
            acc[1] += 0.5 * total_of[1];
            acc[2] += total_of[2];
            for (int64_t c = 0; c < channels; ++c) {
              acc[3 + c] += total_of[3 + c] / (p.sigma[c] * p.sigma[c]);
              acc[3 + channels + c] += total_of[3 + channels + c] / (p.sigma[c] * p.sigma[c] * p.sigma[c]);
            }
          }
        }
      }
    });
  }

  if (laplacian_grad.defined()) {  // the stack += luma^T Laplacian^T (dL/dLaplacian)
    T* gs = grad_stack.data_ptr<T>();
    const T* lg = laplacian_grad.data_ptr<T>();
    T luma[3] = {T(1), T(1), T(1)};
    if (channels == 3)
      for (int k = 0; k < 3; ++k)
        luma[k] = cv.luma_fma && std::is_same<T, float>::value ? T(float(cv.luma[k])) : T(cv.luma[k]);
    at::parallel_for(0, batch * frames * height, grain_rows(width * 3), [&](int64_t i0, int64_t i1) {
      std::vector<T> gray(static_cast<size_t>(width));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t item = i / height, row = i % height;
        laplacian_adjoint_row(lg + item * plane, height, width, row, cv.lap_border, gray.data());
        T* base = gs + item * channels * plane + row * width;
        if (channels == 1) {
          for (int64_t x = 0; x < width; ++x) base[x] += gray[x];
        } else {
          for (int k = 0; k < 3; ++k) {
            T* o = base + cv.rgb[k] * plane;
            for (int64_t x = 0; x < width; ++x) o[x] += luma[k] * gray[x];
          }
        }
      }
    });
  }
  at::Tensor parameters = at::zeros({sums}, options.dtype(at::kDouble));
  if (parameter_grad) {
    double* out = parameters.data_ptr<double>();
    for (int64_t i = 0; i < batch * height; ++i)
      for (int64_t k = 0; k < sums; ++k) out[k] += row_sums[i * sums + k];
  }
  at::Tensor plan = at::zeros({2 * top}, options.dtype(at::kDouble));
  if (plan_grad) {
    double* out = plan.data_ptr<double>();
    for (int64_t l = 0; l < top; ++l)
      for (int64_t i = 0; i < batch * levels[l].h; ++i) {
        if (l + 1 < top) out[l] += plan_rows[l][2 * i];
        out[top + l] += plan_rows[l][2 * i + 1];
      }
  }
  return {stack_grad ? grad_stack : at::empty({0}, options), parameters, plan};
}

// the depth plan vector of efusion_native::fusion: band_0..band_{L-1}, residual_0..residual_{L-1}
std::pair<std::vector<double>, std::vector<double>> vector_plan(const at::Tensor& plan) {
  TORCH_CHECK(plan.dim() == 1 && plan.size(0) >= 2 && plan.size(0) % 2 == 0,
              "efusion_native: plan must be [2L] (band then residual coefficients), got ", plan.sizes());
  const at::Tensor v = plan.to(at::kDouble).contiguous();
  const double* d = v.data_ptr<double>();
  const int64_t top = plan.size(0) / 2;
  return {std::vector<double>(d, d + top), std::vector<double>(d + top, d + 2 * top)};
}

// the parameters vector of efusion_native::fusion: contrast, saturation, exposure, mu_c, sigma_c
WeightParams vector_params(const at::Tensor& parameters, bool sigma_tensor, int64_t channels) {
  TORCH_CHECK(parameters.dim() == 1 && parameters.size(0) == 3 + 2 * channels,
              "efusion_native: parameters must be [3 + 2C], got ", parameters.sizes());
  const at::Tensor v = parameters.to(at::kDouble).contiguous();
  const double* d = v.data_ptr<double>();
  return WeightParams{d[0], d[1], d[2], std::vector<double>(d + 3, d + 3 + channels),
                      std::vector<double>(d + 3 + channels, d + 3 + 2 * channels), sigma_tensor};
}

// fuse (fuse_op's bits), keeping what the backward reads: the normalised weights w [B, N, 1, H, W],
// the measures' product before the floor P = C^c S^s E^e [B, N, 1, H, W] and the weights'
// normaliser T = sum_n (P_n + 1e-12) [B, 1, 1, H, W] (P itself, because w T - 1e-12 loses it where
// it is far below the floor, and dP/dL = c P / L needs it there)
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fusion_impl(const at::Tensor& stack, const WeightParams& p,
                                                           const std::vector<double>& band,
                                                           const std::vector<double>& residual, const Conventions& cv) {
  const int64_t batch = stack.size(0), frames = stack.size(1), height = stack.size(3), width = stack.size(4);
  at::Tensor weights = at::empty({batch, frames, 1, height, width}, stack.options());
  at::Tensor product = at::empty({batch, frames, 1, height, width}, stack.options());
  at::Tensor total = at::empty({batch, 1, 1, height, width}, stack.options());
  weights_into<T>(stack, weights, p, cv, true, total.data_ptr<T>(), product.data_ptr<T>());
  at::Tensor out = blend_impl<T>(stack, weights, band, residual, cv);
  return {out, weights, product, total};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fusion_op(const at::Tensor& stack_in,
                                                                     const at::Tensor& parameters,
                                                                     const at::Tensor& plan, bool sigma_tensor,
                                                                     at::ArrayRef<double> reals,
                                                                     at::IntArrayRef codes) {
  CallThreads threads;
  check_stack(stack_in, "stack");
  const at::Tensor stack = stack_in.contiguous();
  const WeightParams p = vector_params(parameters, sigma_tensor, stack.size(2));
  const auto [band, residual] = vector_plan(plan);
  const auto cv = conventions_from(codes, reals);
  if (stack.scalar_type() == at::kFloat) return fusion_impl<float>(stack, p, band, residual, cv);
  return fusion_impl<double>(stack, p, band, residual, cv);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fusion_backward_op(
    const at::Tensor& grad, const at::Tensor& stack_in, const at::Tensor& weights_in, const at::Tensor& product_in,
    const at::Tensor& total_in, const at::Tensor& parameters, const at::Tensor& plan, bool sigma_tensor,
    at::ArrayRef<double> reals, at::IntArrayRef codes, bool stack_grad, bool parameter_grad, bool plan_grad) {
  CallThreads threads;
  check_stack(stack_in, "stack");
  const at::Tensor stack = stack_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), product = product_in.contiguous(), total = total_in.contiguous();
  const int64_t batch = stack.size(0), frames = stack.size(1), height = stack.size(3), width = stack.size(4);
  const std::vector<int64_t> per_frame{batch, frames, 1, height, width};
  TORCH_CHECK(weights.sizes() == at::IntArrayRef(per_frame) && product.sizes() == at::IntArrayRef(per_frame) &&
                  total.sizes() == at::IntArrayRef({batch, 1, 1, height, width}) &&
                  weights.scalar_type() == stack.scalar_type() && product.scalar_type() == stack.scalar_type() &&
                  total.scalar_type() == stack.scalar_type(),
              "efusion_native: weights and product [B, N, 1, H, W] and total [B, 1, 1, H, W] of the stack's dtype "
              "expected (fusion's outputs), got ", weights.sizes(), ", ", product.sizes(), " and ", total.sizes());
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == stack.size(0) && grad.size(1) == stack.size(2) &&
                  grad.size(2) == stack.size(3) && grad.size(3) == stack.size(4) &&
                  grad.scalar_type() == stack.scalar_type(),
              "efusion_native: grad must be [B, C, H, W] of the stack's dtype, got ", grad.sizes());
  const WeightParams p = vector_params(parameters, sigma_tensor, stack.size(2));
  const auto [band, residual] = vector_plan(plan);
  const auto cv = conventions_from(codes, reals);
  TORCH_CHECK(cv.integer_samples == 0 || stack.scalar_type() != at::kFloat,
              "efusion_native: fusion_backward does not measure integer frames' exact samples (the backend declines "
              "such calls)");
  if (stack.scalar_type() == at::kFloat)
    return fuse_backward_impl<float>(grad, stack, weights, product, total, p, cv, band, residual, stack_grad,
                                     parameter_grad, plan_grad);
  return fuse_backward_impl<double>(grad, stack, weights, product, total, p, cv, band, residual, stack_grad,
                                    parameter_grad, plan_grad);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(efusion_native, m) {
  // fuse with the weight parameters as one differentiable vector [contrast, saturation, exposure,
  // mu_0..mu_{C-1}, sigma_0..sigma_{C-1}] and the depth plan as another [band_0..band_{L-1},
  // residual_0..residual_{L-1}] (float64; autograd registered in Python), and its gradient
  // fusion returns the fused image, then the normalised weights, the measures' product and the
  // weights' normaliser, which its backward reads (not differentiable outputs)
  m.def("fusion(Tensor stack, Tensor parameters, Tensor plan, bool sigma_tensor, float[] reals, int[] conventions) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("fusion_backward(Tensor grad, Tensor stack, Tensor weights, Tensor product, Tensor total, Tensor parameters, "
        "Tensor plan, "
        "bool sigma_tensor, float[] reals, int[] conventions, bool stack_grad, bool parameter_grad, bool plan_grad) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(efusion_native, CPU, m) {
  m.impl("fusion", &fusion_op);
  m.impl("fusion_backward", &fusion_backward_op);
}
