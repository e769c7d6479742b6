#include "recast/eval/corruptions.h"

#include "recast/core/error.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include <cmath>
#include <cstring>
#include <memory>

namespace recast::eval {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Depthwise 2-D filtering of every channel with one kernel [k, k], borders
// reflected (as cv2.filter2D), replicated when the image is too small to reflect.
at::Tensor filter(const at::Tensor& x, at::Tensor kernel) {
  const int64_t c = x.size(1), k = kernel.size(0), pad = k / 2;
  kernel = kernel.to(x.options()).view({1, 1, k, k}).expand({c, 1, k, k}).contiguous();
  const bool reflect = x.size(2) > pad && x.size(3) > pad;
  const at::Tensor padded = reflect ? at::reflection_pad2d(x, {pad, pad, pad, pad})
                                    : at::replication_pad2d(x, {pad, pad, pad, pad});
  return at::conv2d(padded, kernel, at::Tensor(), at::IntArrayRef{1, 1}, at::IntArrayRef{0, 0},
                    at::IntArrayRef{1, 1}, c);
}

// A normalised 1-D Gaussian of `size` taps.
at::Tensor gaussian_taps(int64_t size, double sigma) {
  at::Tensor t = at::arange(size, at::kDouble) - static_cast<double>(size / 2);
  t = (-(t * t) / (2 * sigma * sigma)).exp();
  return t / t.sum();
}

at::Tensor defocus_kernel(double radius, double alias_sigma) {
  // CIFAR-10-C's disk(): a 17x17 aliased disk, then a 3x3 Gaussian blur of it.
  const at::Tensor l = at::arange(-8, 9, at::kDouble);
  auto g = at::meshgrid({l, l}, "ij");
  at::Tensor disk = ((g[0] * g[0] + g[1] * g[1]) <= radius * radius).to(at::kDouble);
  disk = disk / disk.sum();
  const at::Tensor t = gaussian_taps(3, alias_sigma);
  const at::Tensor k3 = at::outer(t, t).view({1, 1, 3, 3});
  return at::conv2d(disk.view({1, 1, 17, 17}), k3, at::Tensor(), at::IntArrayRef{1, 1}, at::IntArrayRef{1, 1}).view({17, 17});
}

at::Tensor motion_kernel(double radius, double sigma, double angle) {
  const int64_t r = static_cast<int64_t>(std::ceil(radius)), size = 2 * r + 1;
  at::Tensor k = at::zeros({size, size}, at::kDouble);
  auto acc = k.accessor<double, 2>();
  // Samples along the ray from the centre, splatted bilinearly onto the grid.
  const int steps = static_cast<int>(4 * r) + 1;
  for (int i = 0; i < steps; ++i) {
    const double t = radius * i / std::max(1, steps - 1);
    const double w = std::exp(-t * t / (2 * sigma * sigma));
    const double y = r + t * std::sin(angle), x = r + t * std::cos(angle);
    const auto y0 = static_cast<int64_t>(std::floor(y)), x0 = static_cast<int64_t>(std::floor(x));
    const double fy = y - static_cast<double>(y0), fx = x - static_cast<double>(x0);
    for (int dy = 0; dy < 2; ++dy) {
      for (int dx = 0; dx < 2; ++dx) {
        const int64_t yy = y0 + dy, xx = x0 + dx;
        if (yy < 0 || yy >= size || xx < 0 || xx >= size) continue;
        acc[yy][xx] += w * (dy ? fy : 1 - fy) * (dx ? fx : 1 - fx);
      }
    }
  }
  return k / k.sum();
}

struct JpegBuffer {
  std::vector<unsigned char> bytes;
};
void append(void* context, void* data, int size) {
  auto* b = static_cast<JpegBuffer*>(context);
  const auto* p = static_cast<const unsigned char*>(data);
  b->bytes.insert(b->bytes.end(), p, p + size);
}

at::Tensor jpeg(const at::Tensor& x, int quality) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const at::Tensor bytes =
      (x * 255.0).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous().cpu();
  at::Tensor out = at::empty({n, h, w, c}, at::kByte);
  for (int64_t i = 0; i < n; ++i) {
    JpegBuffer buf;
    const int ok = stbi_write_jpg_to_func(append, &buf, static_cast<int>(w), static_cast<int>(h),
                                          static_cast<int>(c), bytes[i].data_ptr<uint8_t>(), quality);
    RECAST_CHECK(ok != 0, "jpeg corruption: encoding failed");
    int gw = 0, gh = 0, gc = 0;
    std::unique_ptr<unsigned char, void (*)(void*)> decoded(
        stbi_load_from_memory(buf.bytes.data(), static_cast<int>(buf.bytes.size()), &gw, &gh, &gc,
                              static_cast<int>(c)),
        stbi_image_free);
    RECAST_CHECK(decoded && gw == w && gh == h, "jpeg corruption: decoding failed");
    std::memcpy(out[i].data_ptr<uint8_t>(), decoded.get(), static_cast<size_t>(h * w * c));
  }
  return out.permute({0, 3, 1, 2}).to(x.options()) / 255.0;
}

}  // namespace

const std::vector<std::string>& corruption_names() {
  static const std::vector<std::string> names = {
      "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
      "contrast",       "brightness", "pixelate",      "jpeg"};
  return names;
}

std::vector<Corruption> parse_corruptions(const std::string& spec) {
  std::vector<Corruption> out;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(start, end - start);
    start = end + 1;
    const size_t colon = item.find(':');
    const std::string name = item.substr(0, colon);
    std::vector<int> severities = {1, 2, 3, 4, 5};
    if (colon != std::string::npos) {
      const std::string s = item.substr(colon + 1);
      if (s.size() != 1 || s[0] < '1' || s[0] > '5') {
        throw UsageError(msg("--corrupt ", quote(item), ": severity must be 1 to 5"));
      }
      severities = {s[0] - '0'};
    }
    std::vector<std::string> names;
    if (name == "all") {
      names = corruption_names();
    } else if (std::find(corruption_names().begin(), corruption_names().end(), name) !=
               corruption_names().end()) {
      names = {name};
    } else {
      std::string known;
      for (const auto& n : corruption_names()) known += (known.empty() ? "" : ", ") + n;
      throw UsageError(msg("--corrupt: unknown corruption ", quote(name), " (known: all, ", known, ")"));
    }
    for (const auto& n : names) {
      for (int s : severities) out.push_back({n, s});
    }
  }
  return out;
}

at::Tensor corrupt(const at::Tensor& images, const Corruption& c, uint64_t seed) {
  RECAST_CHECK(images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3),
               "corruption: expected images [B, 1 or 3, H, W], found ", images.sizes());
  RECAST_CHECK(c.severity >= 1 && c.severity <= 5, "corruption severity must be 1 to 5, found ",
               c.severity);
  const auto s = static_cast<size_t>(c.severity - 1);
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor x = images.to(at::kFloat);
  auto noise = [&](at::IntArrayRef shape) { return at::randn(shape, gen, at::kFloat).to(x.device()); };
  auto uniform = [&](at::IntArrayRef shape) { return at::rand(shape, gen, at::kFloat).to(x.device()); };
  at::Tensor y;
  if (c.name == "gaussian_noise") {
    const double sd[] = {0.04, 0.06, 0.08, 0.09, 0.10};
    y = x + noise(x.sizes()) * sd[s];
  } else if (c.name == "shot_noise") {
    const double lam[] = {500, 250, 100, 75, 50};
    y = at::poisson((x.clamp_min(0) * lam[s]).cpu(), gen).to(x.device()) / lam[s];
  } else if (c.name == "impulse_noise") {
    const double amount[] = {0.01, 0.02, 0.03, 0.05, 0.07};
    const at::Tensor u = uniform(x.sizes());
    y = x.masked_fill(u < amount[s] / 2, 0.0).masked_fill((u >= amount[s] / 2) & (u < amount[s]), 1.0);
  } else if (c.name == "defocus_blur") {
    const double radius[] = {0.3, 0.4, 0.5, 1.0, 1.5}, alias[] = {0.4, 0.5, 0.6, 0.2, 0.1};
    y = filter(x, defocus_kernel(radius[s], alias[s]));
  } else if (c.name == "motion_blur") {
    const double radius[] = {10, 10, 10, 10, 12}, sigma[] = {1, 1.5, 2, 2.5, 3};
    const at::Tensor angles = uniform({x.size(0)}).cpu() * 90.0 - 45.0;  // degrees, as CIFAR-10-C
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < x.size(0); ++i) {
      const double angle = angles[i].item<double>() * kPi / 180.0;
      // CIFAR-10-C blurs with radius r at 32 px through ImageMagick, whose
      // kernel support is about 3 sigma: the kernel here spans that.
      rows.push_back(filter(x.narrow(0, i, 1), motion_kernel(std::min(radius[s], 3 * sigma[s]), sigma[s], angle)));
    }
    y = at::cat(rows, 0);
  } else if (c.name == "contrast") {
    const double f[] = {0.75, 0.5, 0.4, 0.3, 0.15};
    const at::Tensor mean = x.mean({1, 2, 3}, /*keepdim=*/true);
    y = (x - mean) * f[s] + mean;
  } else if (c.name == "brightness") {
    const double add[] = {0.05, 0.1, 0.15, 0.2, 0.3};
    if (x.size(1) == 1) {
      y = x + add[s];
    } else {  // HSV value + add, hue and saturation kept: scale the channels
      const at::Tensor v = std::get<0>(x.max(1, /*keepdim=*/true));
      const at::Tensor v2 = (v + add[s]).clamp(0, 1);
      y = at::where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x));
    }
  } else if (c.name == "pixelate") {
    const double f[] = {0.95, 0.9, 0.85, 0.75, 0.65};
    const int64_t h = x.size(2), w = x.size(3);
    const int64_t h2 = std::max<int64_t>(1, static_cast<int64_t>(h * f[s])),
                  w2 = std::max<int64_t>(1, static_cast<int64_t>(w * f[s]));
    y = at::upsample_nearest2d(at::adaptive_avg_pool2d(x, {h2, w2}), {h, w});
  } else if (c.name == "jpeg") {
    const int quality[] = {80, 65, 58, 50, 40};
    y = jpeg(x.clamp(0, 1), quality[s]);
  } else {
    throw UsageError(msg("unknown corruption ", quote(c.name)));
  }
  return y.clamp(0, 1).to(images.scalar_type());
}

}  // namespace recast::eval
