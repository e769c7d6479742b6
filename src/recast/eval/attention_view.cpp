#include "recast/eval/attention_view.h"

#include "recast/core/error.h"
#include "recast/layers/conv_attention.h"

#include <stb/stb_image_write.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace recast::eval {

nlohmann::json LayerAttention::to_json() const {
  nlohmann::json heads = nlohmann::json::array();
  for (size_t h = 0; h < gate.size(); ++h) {
    heads.push_back({{"head", h},
                     {"gate", gate[h]},
                     {"peak", {peak[h].first, peak[h].second}},
                     {"peak_weight", peak_weight[h]},
                     {"distance", distance[h]}});
  }
  return {{"layer", name},          {"kernel", kernel},
          {"stride", stride},       {"input", {in_h, in_w}},
          {"query", {query_row, query_col}}, {"heads", heads}};
}

namespace {

int64_t grid_index(double pos, int64_t image_size, int64_t grid_size) {
  const auto i = static_cast<int64_t>(std::floor(pos / static_cast<double>(image_size) *
                                                 static_cast<double>(grid_size)));
  return std::clamp<int64_t>(i, 0, grid_size - 1);
}

}  // namespace

std::vector<LayerAttention> attention_at(models::Model& model, const at::Tensor& pixels,
                                         double query_y, double query_x, const std::regex& layers) {
  RECAST_CHECK(pixels.dim() == 4 && pixels.size(0) == 1, "analyze: expected one image [1, C, H, W], found ",
               pixels.sizes());
  const int64_t img_h = pixels.size(2), img_w = pixels.size(3);
  RECAST_CHECK(query_y >= 0 && query_y < static_cast<double>(img_h) && query_x >= 0 &&
                   query_x < static_cast<double>(img_w),
               "--query ", query_y, ",", query_x, " is outside the ", img_h, "x", img_w, " image");
  std::vector<std::pair<std::string, layers::ConvAttentionImpl*>> found;
  bool any = false;
  for (const auto& item : model.named_modules("", false)) {
    auto* ca = item.value()->as<layers::ConvAttention>();
    if (!ca) continue;
    any = true;
    if (std::regex_search(item.key(), layers)) found.emplace_back(item.key(), ca);
  }
  RECAST_CHECK(any, "the model has no ConvAttention layer (convert it with --recipe tcnn first)");
  RECAST_CHECK(!found.empty(), "--layers matches none of the model's ConvAttention layers");

  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  for (auto& f : found) f.second->capture_input = true;
  models::Batch batch;
  batch.pixel_values = pixels;
  model.forward(batch);
  if (was_training) model.train();

  std::vector<LayerAttention> out;
  for (auto& [name, ca] : found) {
    ca->capture_input = false;
    const at::Tensor x = ca->captured_input;
    ca->captured_input = at::Tensor();
    RECAST_CHECK(x.defined(), "layer ", name, " did not run in the forward pass");
    const layers::ConvAttentionImpl::Maps m = ca->attention_maps(x);
    LayerAttention l;
    l.name = name;
    l.kernel = ca->options().kernel;
    l.stride = ca->options().stride;
    l.in_h = x.size(2);
    l.in_w = x.size(3);
    l.query_row = grid_index(query_y, img_h, m.out_h);
    l.query_col = grid_index(query_x, img_w, m.out_w);
    const int64_t heads = ca->heads(), c = l.kernel / 2;
    l.maps = m.attention.select(1, l.query_row * m.out_w + l.query_col)
                 .reshape({heads, m.padded_h, m.padded_w})
                 .to(at::kCPU, at::kFloat)
                 .contiguous();
    const at::Tensor g = ca->gate.detach().to(at::kCPU, at::kDouble).contiguous();
    l.gate.assign(g.data_ptr<double>(), g.data_ptr<double>() + heads);
    // Key (ky, kx) on the padded grid sits at input pixel (ky - c, kx - c);
    // the query at (row * stride, col * stride).
    const int64_t qy = l.query_row * l.stride, qx = l.query_col * l.stride;
    const auto fo = at::TensorOptions().dtype(at::kFloat);
    const at::Tensor dy = at::arange(m.padded_h, fo).sub(static_cast<double>(c + qy)).view({-1, 1});
    const at::Tensor dx = at::arange(m.padded_w, fo).sub(static_cast<double>(c + qx)).view({1, -1});
    const at::Tensor dist = (dy * dy + dx * dx).sqrt();
    for (int64_t h = 0; h < heads; ++h) {
      const at::Tensor a = l.maps[h];
      const int64_t k = a.flatten().argmax().item<int64_t>();
      l.peak.emplace_back(k / m.padded_w - c - qy, k % m.padded_w - c - qx);
      l.peak_weight.push_back(a.flatten()[k].item<double>());
      l.distance.push_back((a * dist).sum().item<double>());
    }
    out.push_back(std::move(l));
  }
  return out;
}

void heat_colour(double v, uint8_t rgb[3]) {
  // Five stops of matplotlib's viridis, linearly interpolated.
  static const double stops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  v = std::isfinite(v) ? std::clamp(v, 0.0, 1.0) : 0.0;
  const double t = v * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  for (int k = 0; k < 3; ++k) {
    rgb[k] = static_cast<uint8_t>(std::lround(stops[i][k] * (1 - f) + stops[i + 1][k] * f));
  }
}

namespace {

// The picture as primitives, laid out once and drawn by either writer.
struct Rect {
  int64_t x, y, w, h;
  uint8_t rgb[3];
  bool outline;
};
struct Text {
  int64_t x, y;
  std::string text;
  int size;
};
struct Picture {
  int64_t width = 0, height = 0;
  std::vector<Rect> rects;
  std::vector<Text> texts;
};

constexpr int64_t kMargin = 10, kGap = 8, kTile = 120, kTitle = 20, kLabel = 14;
constexpr uint8_t kRed[3] = {230, 40, 40};

Rect cell(int64_t x, int64_t y, int64_t w, int64_t h, const uint8_t rgb[3], bool outline = false) {
  return {x, y, w, h, {rgb[0], rgb[1], rgb[2]}, outline};
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Draws `image01` [C, H, W] (at most 128 pixels a side, pooled down when
// larger) at (x, y) scaled to about kTile; returns its size.
std::pair<int64_t, int64_t> draw_image(Picture& p, const at::Tensor& image01, int64_t x, int64_t y,
                                       double query_y, double query_x) {
  at::Tensor img = image01.to(at::kCPU, at::kFloat).clamp(0, 1);
  const int64_t h0 = img.size(1), w0 = img.size(2);
  if (std::max(h0, w0) > 128) {
    const double f = 128.0 / static_cast<double>(std::max(h0, w0));
    img = at::adaptive_avg_pool2d(img.unsqueeze(0), {std::max<int64_t>(1, std::lround(h0 * f)),
                                                     std::max<int64_t>(1, std::lround(w0 * f))})[0];
  }
  img = img.contiguous();
  const int64_t c = img.size(0), h = img.size(1), w = img.size(2);
  const int64_t s = std::max<int64_t>(1, kTile / std::max(h, w));
  const float* d = img.data_ptr<float>();
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      uint8_t rgb[3];
      for (int k = 0; k < 3; ++k) {
        rgb[k] = static_cast<uint8_t>(std::lround(255 * d[(c == 3 ? k : 0) * h * w + i * w + j]));
      }
      p.rects.push_back(cell(x + j * s, y + i * s, s, s, rgb));
    }
  }
  const auto qi = static_cast<int64_t>(query_y / static_cast<double>(h0) * static_cast<double>(h));
  const auto qj = static_cast<int64_t>(query_x / static_cast<double>(w0) * static_cast<double>(w));
  p.rects.push_back(cell(x + qj * s - 1, y + qi * s - 1, s + 2, s + 2, kRed, true));
  return {h * s, w * s};
}

Picture layout(const std::vector<LayerAttention>& layers, const at::Tensor& image01, double query_y,
               double query_x) {
  RECAST_CHECK(image01.dim() == 3 && (image01.size(0) == 1 || image01.size(0) == 3),
               "analyze: expected an image [1 or 3, H, W], found ", image01.sizes());
  Picture p;
  int64_t y = kMargin;
  for (const auto& l : layers) {
    p.texts.push_back({kMargin, y + 14,
                       l.name + "  (stride " + std::to_string(l.stride) + ", query row " +
                           std::to_string(l.query_row) + " col " + std::to_string(l.query_col) +
                           " of the output grid)",
                       13});
    y += kTitle;
    const auto [ih, iw] = draw_image(p, image01, kMargin, y + kLabel, query_y, query_x);
    const int64_t ph = l.maps.size(1), pw = l.maps.size(2), c = l.kernel / 2;
    const int64_t s = std::max<int64_t>(2, kTile / std::max(ph, pw));
    const int64_t x0 = kMargin + iw + 2 * kGap;
    int64_t block_h = ih + kLabel;
    for (int64_t h = 0; h < l.maps.size(0); ++h) {
      const int64_t tx = x0 + (h % l.kernel) * (pw * s + kGap);
      const int64_t ty = y + (h / l.kernel) * (ph * s + kGap + kLabel);
      p.texts.push_back({tx, ty + 11,
                         "head " + std::to_string(h) + "  g=" + fixed(l.gate[h], 3) + "  d=" +
                             fixed(l.distance[h], 2),
                         10});
      const at::Tensor a = l.maps[h];
      const double top = std::max(a.max().item<double>(), 1e-12);
      const float* d = a.data_ptr<float>();
      for (int64_t i = 0; i < ph; ++i) {
        for (int64_t j = 0; j < pw; ++j) {
          uint8_t rgb[3];
          heat_colour(d[i * pw + j] / top, rgb);
          p.rects.push_back(cell(tx + j * s, ty + kLabel + i * s, s, s, rgb));
        }
      }
      const int64_t qi = l.query_row * l.stride + c, qj = l.query_col * l.stride + c;
      p.rects.push_back(cell(tx + qj * s, ty + kLabel + qi * s, s, s, kRed, true));
      block_h = std::max(block_h, ty - y + kLabel + ph * s);
      p.width = std::max(p.width, tx + pw * s + kMargin);
    }
    y += block_h + 2 * kGap;
  }
  p.height = y + kMargin - 2 * kGap;
  return p;
}

std::string hex(const uint8_t rgb[3]) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

std::string escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '<') out += "&lt;";
    else if (ch == '>') out += "&gt;";
    else if (ch == '&') out += "&amp;";
    else out += ch;
  }
  return out;
}

}  // namespace

std::string render_svg(const std::vector<LayerAttention>& layers, const at::Tensor& image01,
                       double query_y, double query_x) {
  const Picture p = layout(layers, image01, query_y, query_x);
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(p.width) +
                  "\" height=\"" + std::to_string(p.height) + "\" viewBox=\"0 0 " +
                  std::to_string(p.width) + " " + std::to_string(p.height) +
                  "\" shape-rendering=\"crispEdges\" font-family=\"sans-serif\">\n"
                  "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  for (const auto& r : p.rects) {
    s += "<rect x=\"" + std::to_string(r.x) + "\" y=\"" + std::to_string(r.y) + "\" width=\"" +
         std::to_string(r.w) + "\" height=\"" + std::to_string(r.h) + "\" " +
         (r.outline ? "fill=\"none\" stroke-width=\"1\" stroke=\"" : "fill=\"") + hex(r.rgb) + "\"/>\n";
  }
  for (const auto& t : p.texts) {
    s += "<text x=\"" + std::to_string(t.x) + "\" y=\"" + std::to_string(t.y) + "\" font-size=\"" +
         std::to_string(t.size) + "\">" + escape(t.text) + "</text>\n";
  }
  return s + "</svg>\n";
}

std::string render_png(const std::vector<LayerAttention>& layers, const at::Tensor& image01,
                       double query_y, double query_x) {
  const Picture p = layout(layers, image01, query_y, query_x);
  std::vector<uint8_t> px(static_cast<size_t>(p.width * p.height * 3), 255);
  auto put = [&](int64_t x, int64_t y, const uint8_t rgb[3]) {
    if (x < 0 || y < 0 || x >= p.width || y >= p.height) return;
    std::copy(rgb, rgb + 3, px.begin() + (y * p.width + x) * 3);
  };
  for (const auto& r : p.rects) {
    for (int64_t y = r.y; y < r.y + r.h; ++y) {
      for (int64_t x = r.x; x < r.x + r.w; ++x) {
        const bool edge = y == r.y || y == r.y + r.h - 1 || x == r.x || x == r.x + r.w - 1;
        if (!r.outline || edge) put(x, y, r.rgb);
      }
    }
  }
  std::string out;
  auto append = [](void* ctx, void* data, int n) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<size_t>(n));
  };
  const int ok = stbi_write_png_to_func(append, &out, static_cast<int>(p.width),
                                        static_cast<int>(p.height), 3, px.data(),
                                        static_cast<int>(p.width * 3));
  RECAST_CHECK(ok != 0 && !out.empty(), "could not encode the PNG (", p.width, "x", p.height, ")");
  return out;
}

}  // namespace recast::eval
