#include "recast/eval/attention_view.h"

#include "recast/core/error.h"
#include "recast/layers/conv_attention.h"
#include "recast/layers/refiner.h"

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
  if (!cls_weight.empty()) {
    for (size_t h = 0; h < heads.size(); ++h) heads[h]["cls_weight"] = cls_weight[h];
  }
  nlohmann::json j = {{"layer", name},          {"kernel", kernel},
          {"stride", stride},       {"input", {in_h, in_w}},
          {"query", {query_row, query_col}}, {"heads", heads}};
  if (!variant.empty()) j["maps"] = variant;
  return j;
}

namespace {

int64_t grid_index(double pos, int64_t image_size, int64_t grid_size) {
  const auto i = static_cast<int64_t>(std::floor(pos / static_cast<double>(image_size) *
                                                 static_cast<double>(grid_size)));
  return std::clamp<int64_t>(i, 0, grid_size - 1);
}

// A refined ViT's maps at the query patch, raw and refined, per refiner
// whose attention's name matches.
std::vector<LayerAttention> refined_attention_at(models::Model& model, const at::Tensor& pixels,
                                                 double query_y, double query_x,
                                                 const std::regex& layers) {
  std::vector<std::pair<std::string, layers::MapRefinerImpl*>> found;
  for (const auto& item : model.named_modules("", false)) {
    auto* r = item.value()->as<layers::MapRefiner>();
    if (!r) continue;
    const std::string attention = item.key().substr(0, item.key().rfind('.'));
    if (std::regex_search(attention, layers)) found.emplace_back(attention, r);
  }
  RECAST_CHECK(!found.empty(), "--layers matches none of the model's refined attention layers");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  for (auto& f : found) f.second->capture = true;
  models::Batch batch;
  batch.pixel_values = pixels;
  model.forward(batch);
  if (was_training) model.train();
  std::vector<LayerAttention> out;
  for (auto& [name, r] : found) {
    r->capture = false;
    const at::Tensor raw = r->captured_raw, refined = r->captured_refined;
    r->captured_raw = r->captured_refined = at::Tensor();
    RECAST_CHECK(raw.defined(), "layer ", name, " did not run in the forward pass");
    const int64_t heads = raw.size(1), n = raw.size(2);
    const auto g = static_cast<int64_t>(std::floor(std::sqrt(static_cast<double>(n))));
    const int64_t lead = n - g * g;
    RECAST_CHECK(g >= 1 && lead >= 0, "layer ", name, ": ", n, " tokens are no patch grid");
    const int64_t qr = grid_index(query_y, pixels.size(2), g), qc = grid_index(query_x, pixels.size(3), g);
    const at::Tensor gate = r->gate.detach().to(at::kCPU, at::kDouble).contiguous();
    const at::Tensor idx = at::arange(g * g, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor dist = ((idx.div(static_cast<double>(g)).floor() - static_cast<double>(qr)).pow(2) +
                             (idx.remainder(static_cast<double>(g)) - static_cast<double>(qc)).pow(2))
                                .sqrt();
    for (const auto& [variant, maps] : {std::pair<const char*, at::Tensor>{"raw", raw}, {"refined", refined}}) {
      LayerAttention l;
      l.name = name;
      l.variant = variant;
      l.kernel = r->options().kernel;
      l.columns = heads;
      l.in_h = l.in_w = g;
      l.query_row = qr;
      l.query_col = qc;
      const at::Tensor row = maps[0].select(1, lead + qr * g + qc).to(at::kCPU, at::kFloat);  // [H, N]
      l.maps = row.narrow(1, lead, g * g).reshape({heads, g, g}).contiguous();
      l.gate.assign(gate.data_ptr<double>(), gate.data_ptr<double>() + heads);
      for (int64_t h = 0; h < heads; ++h) {
        const at::Tensor a = l.maps[h].flatten();
        const int64_t k = a.argmax().item<int64_t>();
        l.peak.emplace_back(k / g - qr, k % g - qc);
        l.peak_weight.push_back(a[k].item<double>());
        const at::Tensor p = a.clamp_min(0);
        const double total = p.sum().item<double>();
        l.distance.push_back(total > 0 ? (p * dist).sum().item<double>() / total : 0.0);
        l.cls_weight.push_back(lead > 0 ? row[h][0].item<double>() : 0.0);
      }
      out.push_back(std::move(l));
    }
  }
  return out;
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
  bool any = false, refined = false;
  for (const auto& item : model.named_modules("", false)) {
    refined = refined || item.value()->as<layers::MapRefiner>() != nullptr;
    auto* ca = item.value()->as<layers::ConvAttention>();
    if (!ca) continue;
    any = true;
    if (std::regex_search(item.key(), layers)) found.emplace_back(item.key(), ca);
  }
  if (!any && refined) return refined_attention_at(model, pixels, query_y, query_x, layers);
  RECAST_CHECK(any, "the model has no ConvAttention layer nor refined attention (convert it with "
                    "--recipe tcnn or --recipe refiner first)");
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
    l.columns = l.kernel;
    l.pad = l.kernel / 2;
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

constexpr int64_t kMargin = 10, kGap = 8, kTile = 120, kTitle = 20, kLabel = 14;
const draw::Colour kRed = draw::Colour::rgb8(230, 40, 40);
const draw::Colour kInk = draw::Colour::rgb8(0x33, 0x33, 0x33);

// v with `digits` decimals, "0.000" rather than "-0.000" for a tiny negative.
std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  std::string s = buf;
  if (s[0] == '-' && s.find_first_not_of("-0.") == std::string::npos) s.erase(0, 1);
  return s;
}

// The input as shown: at most 128 pixels a side (pooled down when larger),
// each drawn as a cell x cell square so that it spans about kTile.
struct Thumb {
  int64_t h, w, cell;
};

Thumb thumb_of(const at::Tensor& image01) {
  const int64_t h0 = image01.size(1), w0 = image01.size(2);
  int64_t h = h0, w = w0;
  if (std::max(h0, w0) > 128) {
    const double f = 128.0 / static_cast<double>(std::max(h0, w0));
    h = std::max<int64_t>(1, std::lround(static_cast<double>(h0) * f));
    w = std::max<int64_t>(1, std::lround(static_cast<double>(w0) * f));
  }
  return {h, w, std::max<int64_t>(1, kTile / std::max(h, w))};
}

// Draws `image01` [C, H, W] at (x, y) with the query marked.
void draw_image(draw::Figure& fig, const at::Tensor& image01, const Thumb& t, int64_t x, int64_t y,
                double query_y, double query_x) {
  at::Tensor img = image01.to(at::kCPU, at::kFloat).clamp(0, 1);
  const int64_t h0 = img.size(1), w0 = img.size(2);
  if (t.h != h0 || t.w != w0) img = at::adaptive_avg_pool2d(img.unsqueeze(0), {t.h, t.w})[0];
  // [C, H, W] -> [H, W, 3] bytes (grey repeated).
  if (img.size(0) == 1) img = img.expand({3, -1, -1});
  img = img.mul(255).round().to(at::kByte).permute({1, 2, 0}).contiguous();
  const uint8_t* d = img.data_ptr<uint8_t>();
  fig.raster(static_cast<double>(x), static_cast<double>(y), t.w, t.h,
             std::vector<uint8_t>(d, d + t.h * t.w * 3), t.cell, "image");
  const auto qi = static_cast<int64_t>(query_y / static_cast<double>(h0) * static_cast<double>(t.h));
  const auto qj = static_cast<int64_t>(query_x / static_cast<double>(w0) * static_cast<double>(t.w));
  fig.stroke_rect(static_cast<double>(x + qj * t.cell - 1), static_cast<double>(y + qi * t.cell - 1),
                  static_cast<double>(t.cell + 1), static_cast<double>(t.cell + 1), kRed, 1, "query");
}

// Lays out and draws every layer; returns the extent used (width, height).
std::pair<int64_t, int64_t> lay_out(draw::Figure& fig, const std::vector<LayerAttention>& layers,
                                    const at::Tensor& image01, double query_y, double query_x) {
  int64_t width = 0, y = kMargin;
  for (const auto& l : layers) {
    fig.set_group(l.variant.empty() ? l.name : l.name + " " + l.variant);
    const std::string title =
        l.variant.empty()
            ? l.name + "  (stride " + std::to_string(l.stride) + ", query row " +
                  std::to_string(l.query_row) + " col " + std::to_string(l.query_col) + " of the output grid)"
            : l.name + "  " + l.variant + " maps  (query patch row " + std::to_string(l.query_row) +
                  " col " + std::to_string(l.query_col) + " of " + std::to_string(l.in_h) + "x" +
                  std::to_string(l.in_w) + ")";
    fig.text(kMargin, static_cast<double>(y + 14), title,
             draw::Font{13, true}, kInk, draw::Anchor::start, "title");
    y += kTitle;
    const Thumb thumb = thumb_of(image01);
    const int64_t ih = thumb.h * thumb.cell, iw = thumb.w * thumb.cell;
    draw_image(fig, image01, thumb, kMargin, y + kLabel, query_y, query_x);
    const int64_t ph = l.maps.size(1), pw = l.maps.size(2), c = l.pad;
    const int64_t s = std::max<int64_t>(2, kTile / std::max(ph, pw));
    const int64_t x0 = kMargin + iw + 2 * kGap;
    int64_t block_h = ih + kLabel;
    for (int64_t h = 0; h < l.maps.size(0); ++h) {
      const int64_t cols = std::max<int64_t>(1, l.columns);
      const int64_t tx = x0 + (h % cols) * (pw * s + kGap);
      const int64_t ty = y + (h / cols) * (ph * s + kGap + kLabel);
      fig.text(static_cast<double>(tx), static_cast<double>(ty + 11),
               "head " + std::to_string(h) + " g=" + fixed(l.gate[h], 3) +
                   " d=" + fixed(l.distance[h], 2),
               draw::Font{10}, kInk, draw::Anchor::start, "head", std::to_string(h));
      const at::Tensor a = l.maps[h].contiguous();
      const double top = std::max(a.max().item<double>(), 1e-12);
      const float* d = a.data_ptr<float>();
      std::vector<uint8_t> rgb(static_cast<size_t>(ph * pw * 3));
      for (int64_t i = 0; i < ph * pw; ++i) heat_colour(d[i] / top, &rgb[static_cast<size_t>(i * 3)]);
      fig.raster(static_cast<double>(tx), static_cast<double>(ty + kLabel), pw, ph, std::move(rgb), s,
                 "map");
      const int64_t qi = l.query_row * l.stride + c, qj = l.query_col * l.stride + c;
      fig.stroke_rect(static_cast<double>(tx + qj * s), static_cast<double>(ty + kLabel + qi * s),
                      static_cast<double>(s - 1), static_cast<double>(s - 1), kRed, 1, "query");
      block_h = std::max(block_h, ty - y + kLabel + ph * s);
      width = std::max(width, tx + pw * s + kMargin);
    }
    y += block_h + 2 * kGap;
  }
  return {width, y + kMargin - 2 * kGap};
}

}  // namespace

draw::Figure attention_figure(const std::vector<LayerAttention>& layers, const at::Tensor& image01,
                              double query_y, double query_x) {
  RECAST_CHECK(image01.dim() == 3 && (image01.size(0) == 1 || image01.size(0) == 3),
               "analyze: expected an image [1 or 3, H, W], found ", image01.sizes());
  draw::Figure fig(1, 1);
  const auto [width, height] = lay_out(fig, layers, image01, query_y, query_x);
  fig.set_size(static_cast<double>(width), static_cast<double>(height));
  return fig;
}

}  // namespace recast::eval
