// T-CNN: ConvAttention equals the convolution it was built from (fp32,
// relative <= 1e-5, borders included) for K = 1, 3, 5, stride 1 and 2,
// C_in != C_out, odd and even, non-square inputs, with and without bias, in
// both the fast and the explicit-attention forms; with the gates open the two
// forms agree forward and backward; the gate is exactly 0 at init yet gets a
// gradient; a converted ResNet reproduces the original logits.

#include "recast/eval/attention_view.h"
#include "recast/io/checkpoint.h"
#include "recast/layers/conv_attention.h"
#include "recast/models/model.h"
#include "recast/recasts/factorize.h"
#include "recast/recasts/recast.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <torch/torch.h>

#include <cmath>
#include <regex>

namespace recast::testing {
namespace {

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs().max() /
          b.to(at::kDouble).abs().max().clamp_min(1e-30))
      .item<double>();
}

layers::ConvAttention from_conv(const torch::nn::Conv2d& conv, std::optional<double> alpha,
                                layers::ContentPath path = layers::ContentPath::ValuesFirst,
                                int64_t qk_dim = 0) {
  layers::ConvAttentionOptions o;
  o.content = path;
  o.qk_dim = qk_dim;
  o.in = conv->options.in_channels();
  o.out = conv->options.out_channels();
  o.kernel = (*conv->options.kernel_size())[0];
  o.stride = (*conv->options.stride())[0];
  o.bias = conv->options.bias();
  o.alpha = alpha;
  layers::ConvAttention ca(o);
  torch::NoGradGuard no_grad;
  ca->weight.copy_(conv->weight);
  if (o.bias) ca->bias.copy_(conv->bias);
  return ca;
}

TEST(ConvAttention, EqualsTheConvolutionItWasBuiltFrom) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  for (int64_t k : {1, 3, 5}) {
    for (int64_t stride : {1, 2}) {
      for (bool bias : {false, true}) {
        for (auto [h, w] : {std::pair<int64_t, int64_t>{7, 10}, {8, 5}}) {
          auto conv = torch::nn::Conv2d(
              torch::nn::Conv2dOptions(6, 11, k).stride(stride).padding(k / 2).bias(bias));
          const at::Tensor x = torch::randn({2, 6, h, w});
          const at::Tensor ref = conv(x);
          auto hard = from_conv(conv, std::nullopt);
          auto soft = from_conv(conv, 40.0);  // nearest wrong tap: exp(-40)
          const std::string where = msg("K=", k, " stride=", stride, " bias=", bias, " ", h, "x", w);
          EXPECT_EQ(hard(x).sizes(), ref.sizes()) << where;
          EXPECT_LT(max_rel(hard(x), ref), 1e-5) << where;
          EXPECT_LT(max_rel(hard->forward_reference(x), ref), 1e-5) << where;
          EXPECT_LT(max_rel(soft(x), ref), 1e-5) << where;
          EXPECT_LT(max_rel(soft->forward_reference(x), ref), 1e-5) << where;
        }
      }
    }
  }
}

TEST(ConvAttention, BordersNeedTheZeroRing) {
  // A soft layer with a small alpha spreads attention; at the border the
  // zero-valued ring keeps it equal to the reference form, which builds the
  // same attention explicitly. And a border pixel of the hard layer equals
  // zero padding exactly (checked above); here, the first row's error.
  torch::manual_seed(1);
  torch::NoGradGuard no_grad;
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1).bias(false));
  const at::Tensor x = torch::randn({1, 3, 6, 6});
  auto hard = from_conv(conv, std::nullopt);
  EXPECT_LT(max_rel(hard(x).select(2, 0), conv(x).select(2, 0)), 1e-6);
  auto soft = from_conv(conv, 2.0);
  EXPECT_LT(max_rel(soft(x), soft->forward_reference(x)), 1e-5);
  EXPECT_GT(max_rel(soft(x), conv(x)), 1e-3);  // finite alpha: not the conv any more
}

TEST(ConvAttention, FastAndReferenceFormsAgreeWithOpenGatesForwardAndBackward) {
  torch::manual_seed(2);
  using layers::ContentPath;
  // Every content path; chunked needs in % max(qk_dim, 64) == 0: 128 channels
  // with qk_dim 64 (two chunks) and with qk_dim 16 (q and k padded to 64).
  const std::tuple<ContentPath, int64_t, int64_t, const char*> paths[] = {
      {ContentPath::ValuesFirst, 5, 0, "values_first"},
      {ContentPath::Chunked, 128, 64, "chunked"},
      {ContentPath::Chunked, 128, 16, "chunked, padded q/k"},
      {ContentPath::Automatic, 5, 0, "automatic"}};
  for (const auto& [path, in, qk_dim, path_name] : paths) {
    for (std::optional<double> alpha : {std::optional<double>{}, std::optional<double>{3.0}}) {
      for (int64_t stride : {1, 2}) {
        auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(in, 7, 3).stride(stride).padding(1).bias(true));
        auto a = from_conv(conv, alpha, path, qk_dim);
        auto b = from_conv(conv, alpha, path, qk_dim);
        {
          torch::NoGradGuard no_grad;
          a->gate.uniform_(0.1, 0.9);
          b->gate.copy_(a->gate);
          b->qk->weight.copy_(a->qk->weight.normal_(0, 0.3));
        }
        const at::Tensor x0 = torch::randn({2, in, 6, 9});
        at::Tensor xa = x0.clone().requires_grad_(true), xb = x0.clone().requires_grad_(true);
        const at::Tensor ya = a(xa), yb = b->forward_reference(xb);
        const std::string where = msg(path_name, alpha ? " soft" : " hard", " stride ", stride);
        EXPECT_LT(max_rel(ya, yb), 1e-5) << where;
        const at::Tensor g = torch::randn(ya.sizes());
        (ya * g).sum().backward();
        (yb * g).sum().backward();
        EXPECT_LT(max_rel(xa.grad(), xb.grad()), 1e-5) << where;
        auto pa = a->named_parameters(true), pb = b->named_parameters(true);
        for (const auto& p : pa) {
          ASSERT_TRUE(p.value().grad().defined()) << where << " " << p.key();
          EXPECT_LT(max_rel(p.value().grad(), pb[p.key()].grad()), 1e-4) << where << " " << p.key();
        }
      }
    }
  }
}

TEST(ConvAttention, GateIsZeroAtInitAndLearns) {
  torch::manual_seed(3);
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false));
  auto ca = from_conv(conv, std::nullopt);
  EXPECT_TRUE(torch::equal(ca->gate, torch::zeros({9})));
  const at::Tensor x = torch::randn({2, 4, 5, 5});
  const at::Tensor y = ca(x);  // with autograd on: the content branch is computed
  EXPECT_LT(max_rel(y, conv(x)), 1e-6);
  (y - torch::randn(y.sizes())).pow(2).mean().backward();
  ASSERT_TRUE(ca->gate.grad().defined());
  EXPECT_GT(ca->gate.grad().abs().max().item<double>(), 1e-6);  // healthy, not ~1e-9
  ASSERT_TRUE(ca->qk->weight.grad().defined());
}

TEST(ConvAttention, MeanAttentionDistanceOfTheHardLayerIsTheTapDistance) {
  torch::NoGradGuard no_grad;
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 2, 3).padding(1).bias(false));
  auto ca = from_conv(conv, std::nullopt);
  const at::Tensor d = ca->mean_attention_distance(torch::randn({2, 2, 5, 5}));
  // Head (i, j) looks at offset (i - 1, j - 1) from every query.
  const at::Tensor expected = torch::tensor({1.41421356f, 1.f, 1.41421356f, 1.f, 0.f, 1.f,
                                             1.41421356f, 1.f, 1.41421356f});
  EXPECT_TRUE(torch::allclose(d, expected, 1e-5, 1e-6)) << d;
}

models::ModelPtr tiny_resnet(const std::string& arch) {
  return tiny_model(arch, {{"num_classes", 10}, {"in_chans", 1}, {"channels", {8, 8, 16, 16}}}, 4,
                    /*perturb=*/true);
}

TEST(Tcnn, ConvertedResNetReproducesTheLogitsAndReportsEachLayer) {
  for (const char* arch : {"resnet18", "resnet50"}) {
    auto source = tiny_resnet(arch);
    recasts::RecipeOptions o;
    o.probe.pixel_values = torch::randn({4, 1, 28, 28});
    for (const std::string& layers : {std::string(), std::string("layer[34]\\.")}) {
      o.layers = layers;
      recasts::Conversion c = recasts::get("tcnn").convert(*source, o);
      ASSERT_FALSE(c.report.empty());
      for (const auto& r : c.report) {
        EXPECT_LT(r.relative_error, 1e-5) << arch << " " << r.module;
        EXPECT_LT(r.max_abs_error, 1e-4) << arch << " " << r.module;
        EXPECT_EQ(r.detail, "explicit attention maps");
      }
      if (layers.empty()) {  // default: the 3x3 convolutions of the last stage
        EXPECT_EQ(c.report.front().module, std::string(arch) == "resnet18" ? "layer4.0.conv1" : "layer4.0.conv2");
        for (const auto& r : c.report) EXPECT_EQ(r.module.rfind("layer4.", 0), 0u) << r.module;
      }
      torch::NoGradGuard no_grad;
      source->eval();
      c.model->eval();
      const at::Tensor x = torch::randn({3, 1, 28, 28});
      models::Batch b{{}, {}, x, {}, {}};
      EXPECT_LT(max_rel(c.model->forward(b), source->forward(b)), 1e-4) << arch << " " << layers;
      EXPECT_LT(c.manifest["logits_change"]["relative"].get<double>(), 1e-4);
    }
  }
}

// ResNets saved by timm (the loader fixtures, made by tools/ on the GPU
// machine): converted, they still give timm's logits.
TEST(Tcnn, TimmResNetsStillGiveTimmsLogits) {
  const std::string fixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";
  for (const char* name : {"resnet18_timm", "resnet50_timm"}) {
    const std::string dir = fixtures + "/" + name;
    models::ModelPtr source = models::load_model(dir);
    const io::TensorStore inputs = io::TensorStore::open(dir + "/inputs.safetensors");
    const io::TensorStore outputs = io::TensorStore::open(dir + "/outputs.safetensors");
    models::Batch batch;
    batch.pixel_values = inputs.tensor("pixel_values", true);
    for (const std::string& layers : {std::string(), std::string(".")}) {  // last stage; all 3x3
      recasts::RecipeOptions o;
      o.layers = layers;
      o.probe = batch;
      recasts::Conversion c = recasts::get("tcnn").convert(*source, o);
      torch::NoGradGuard no_grad;
      c.model->eval();
      EXPECT_LT(max_rel(c.model->forward(batch), outputs.tensor("logits")), 1e-4)
          << name << " layers '" << layers << "', " << c.report.size() << " converted";
      for (const auto& r : c.report) EXPECT_LT(r.relative_error, 1e-5) << name << " " << r.module;
    }
  }
}

// recast analyze's numbers and pictures: at init every head of a hard T-CNN
// puts all its weight on its tap (the gates are 0), so the peak is the tap offset (i - c, j - c)
// with weight 1 and the distance is the tap's length; soft heads peak there too.
TEST(Tcnn, AttentionAtTheQueryPeaksOnEachHeadsTap) {
  auto source = tiny_resnet("resnet18");
  for (std::optional<double> alpha : {std::optional<double>(), std::optional<double>(2.0)}) {
    recasts::RecipeOptions o;
    o.layers = "layer[34]\\.";
    if (alpha) o.values["alpha"] = *alpha;
    o.probe.pixel_values = torch::randn({2, 1, 28, 28});
    recasts::Conversion c = recasts::get("tcnn").convert(*source, o);
    const at::Tensor image01 = torch::rand({1, 28, 28});
    const auto found = eval::attention_at(*c.model, image01.unsqueeze(0), 20, 9, std::regex("layer3"));
    ASSERT_EQ(found.size(), 4u);  // layer3.{0,1}.conv{1,2}
    for (const auto& l : found) {
      EXPECT_EQ(l.name.rfind("layer3.", 0), 0u) << l.name;
      ASSERT_EQ(l.gate.size(), 9u);
      // Every layer3 conv has a 2x2 output grid (28 -> 14 -> 7 -> 4 -> 2);
      // the query (20, 9) of 28x28 falls in its row 1, column 0.
      EXPECT_EQ(l.query_row, 1) << l.name;
      EXPECT_EQ(l.query_col, 0) << l.name;
      for (int64_t h = 0; h < 9; ++h) {
        EXPECT_EQ(l.gate[h], 0.0);
        EXPECT_EQ(l.peak[h], std::make_pair(h / 3 - 1, h % 3 - 1)) << l.name << " head " << h;
        if (!alpha) {
          EXPECT_EQ(l.peak_weight[h], 1.0) << l.name << " head " << h;
          EXPECT_NEAR(l.distance[h], std::hypot(h / 3 - 1, h % 3 - 1), 1e-6) << l.name;
        }
        EXPECT_NEAR(l.maps[h].sum().item<double>(), 1.0, 1e-5);
      }
    }
    // The picture: per layer a title, the input and one labelled heat map per
    // head, each with the query outlined; a PNG that decodes to its size, and
    // an SVG of the same size.
    const draw::Figure fig = eval::attention_figure(found, image01, 20, 9);
    for (const auto& l : found) {
      EXPECT_EQ(fig.find(l.name, "title").size(), 1u) << l.name;
      EXPECT_EQ(fig.find(l.name, "image").size(), 1u) << l.name;
      EXPECT_EQ(fig.find(l.name, "head").size(), 9u) << l.name;
      EXPECT_EQ(fig.find(l.name, "map").size(), 9u) << l.name;
      EXPECT_EQ(fig.find(l.name, "query").size(), 10u) << l.name;
      EXPECT_EQ(fig.find(l.name, "head", "4").at(0)->text.rfind("head 4 g=0.000 d=", 0), 0u);
      // Every map sits inside the picture.
      for (const draw::Item* m : fig.find(l.name, "map")) {
        EXPECT_LE(m->x + m->w, fig.width());
        EXPECT_LE(m->y + m->h, fig.height());
      }
    }
    EXPECT_EQ(fig.find("layer3.0.conv1", "title").at(0)->text.rfind("layer3.0.conv1  (stride", 0), 0u);
    const std::string png = fig.png();
    int w = 0, h = 0, ch = 0;
    ASSERT_TRUE(stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(png.data()),
                                      static_cast<int>(png.size()), &w, &h, &ch));
    EXPECT_EQ(w, static_cast<int>(fig.width()));
    EXPECT_EQ(h, static_cast<int>(fig.height()));
    EXPECT_GT(w, 3 * 120);
    EXPECT_GT(h, 4 * 120);
    const std::string svg = fig.svg();
    EXPECT_NE(svg.find("width=\"" + std::to_string(w) + "px\""), std::string::npos);
    EXPECT_NE(svg.find("<image"), std::string::npos);  // the heat maps, embedded
    EXPECT_THROW(eval::attention_at(*c.model, image01.unsqueeze(0), 13, 9, std::regex("layer9")), Error);
    EXPECT_THROW(eval::attention_at(*c.model, image01.unsqueeze(0), 28, 9, std::regex(".")), Error);
  }
  EXPECT_THROW(eval::attention_at(*source, torch::rand({1, 1, 28, 28}), 1, 1, std::regex(".")), Error);
}

TEST(Tcnn, RefusesWhatItCannotConvert) {
  auto gpt = models::create_model("gpt2", {{"n_layer", 1}, {"n_embd", 8}, {"n_head", 2}, {"vocab_size", 11}});
  recasts::RecipeOptions o;
  EXPECT_THROW(recasts::get("tcnn").convert(*gpt, o), UsageError);
  auto r = tiny_resnet("resnet18");
  o.layers = "fc";
  EXPECT_THROW(recasts::get("tcnn").convert(*r, o), UsageError);
}

// `--set recast_tcnn=...` on a timm-style config (pretrain of the hybrid from
// scratch) lands at the top level, where the model reads it, not in
// model_args, where it would silently build a plain CNN.
TEST(Tcnn, SetOverrideBuildsTheHybridFromScratch) {
  nlohmann::json config = {{"architecture", "resnet18"}};
  models::apply_overrides(config, "resnet18",
                          {"num_classes=10", "in_chans=1",
                           R"(recast_tcnn={"layers": ["layer4.1.conv2"], "alpha": null, "qk_dim": 0})"});
  EXPECT_TRUE(config.contains("recast_tcnn"));
  EXPECT_FALSE(config["model_args"].contains("recast_tcnn"));
  EXPECT_TRUE(models::has_config_value(config, "resnet18", "recast_tcnn"));
  EXPECT_EQ(config["model_args"]["in_chans"], 1);
  auto model = models::create_model("resnet18", config);
  int64_t attention_layers = 0;
  for (const auto& item : model->named_modules("", false)) {
    if (item.value()->as<layers::ConvAttention>() != nullptr) {
      ++attention_layers;
      EXPECT_EQ(item.key(), "layer4.1.conv2");
    }
  }
  EXPECT_EQ(attention_layers, 1);
}

}  // namespace
}  // namespace recast::testing
