// recast analyze --model DIR (--image FILE | --index N --data SPEC) [--query Y,X]
//                [--layers REGEX] [--out FILE.png|FILE.svg] [--json]
// A T-CNN's or a refined ViT's attention for one image: per ConvAttention
// layer (refined attention: its maps before and after refinement) and head,
// the gate, the key with the most weight (as an offset from the query), its
// weight and the mean attention distance for the query; with --out, every
// head's attention map drawn (eval/attention_view.h). The query is in input pixels
// (default: the image's centre) and maps to each layer's grid by position.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/eval/attention_view.h"
#include "recast/io/file.h"

#include <stb/stb_image.h>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <memory>

namespace recast::cli {
namespace {

struct AnalyzeCli {
  std::string model, image, data, split = "test", query, layers = ".", out, device = "cpu";
  int64_t index = -1;
  int64_t seed = -1;
  bool json = false;
};

// An image file as float [C, H, W] in [0, 1] with the model's channel count.
at::Tensor read_image01(const std::string& path, int64_t channels) {
  int w = 0, h = 0, c = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load(path.c_str(), &w, &h, &c, static_cast<int>(channels)), stbi_image_free);
  if (!data) throw Error(msg(path, ": cannot decode image (", stbi_failure_reason(), ")"));
  return at::from_blob(data.get(), {h, w, channels}, at::kByte)
      .permute({2, 0, 1})
      .to(at::kFloat)
      .div(255)
      .contiguous();
}

std::pair<double, double> parse_query(const std::string& spec, int64_t h, int64_t w) {
  if (spec.empty()) return {static_cast<double>(h / 2), static_cast<double>(w / 2)};
  double y = 0, x = 0;
  char tail = 0;
  if (std::sscanf(spec.c_str(), "%lf,%lf%c", &y, &x, &tail) != 2) {
    throw UsageError(msg("--query ", quote(spec), ": expected ROW,COL in input pixels"));
  }
  if (y < 0 || x < 0 || y >= static_cast<double>(h) || x >= static_cast<double>(w)) {
    throw UsageError(msg("--query ", spec, " is outside the ", h, "x", w, " image"));
  }
  return {y, x};
}

int run_analyze(const AnalyzeCli& o) {
  if (o.image.empty() == (o.index < 0)) throw UsageError("give one of --image FILE and --index N");
  if (o.index >= 0 && o.data.empty()) throw UsageError("--index needs --data SPEC");
  if (o.index < 0 && (!o.data.empty() || o.seed >= 0 || o.split != "test")) {
    throw UsageError("--data, --split and --seed choose the image of --index; with --image they do not apply");
  }
  if (!o.out.empty() && !draw::format_of(o.out)) {
    throw UsageError(msg("--out ", o.out, ": expected a .png or .svg file"));
  }
  std::regex layers;
  try {
    layers = std::regex(o.layers);
  } catch (const std::regex_error& e) {
    throw UsageError(msg("--layers ", quote(o.layers), ": ", e.what()));
  }
  const c10::Device device = select_device(o.device);
  models::ModelPtr model = models::load_model(o.model);
  if (model->task() != models::Task::ImageClassification) {
    throw UsageError(msg("--model ", o.model, " is not an image classifier"));
  }
  train::Normalization norm = normalization_of(model->config());
  const int64_t channels = model->example_batch(1, 0).pixel_values.size(1);
  at::Tensor image01;  // [C, H, W] in [0, 1], what is drawn
  std::string source;
  if (!o.image.empty()) {
    image01 = read_image01(o.image, channels);
    if (norm.mean.empty()) {
      log::warn(o.model, " records no input normalisation (pretrained_cfg); using the pixels in [0, 1]");
      norm.mean.assign(static_cast<size_t>(channels), 0.0);
      norm.std.assign(static_cast<size_t>(channels), 1.0);
    }
    source = o.image;
  } else {
    train::DataOptions d;
    d.spec = o.data;
    d.split = o.split;
    d.seed = o.seed >= 0 ? static_cast<uint64_t>(o.seed)
                         : split_seed_of(manifest_of(o.model));
    d.image = image_input_of(model->config(), manifest_of(o.model));
    auto data = train::open_dataset(d, nullptr, &norm);
    if (data->kind() != train::DataKind::ImageClassification) {
      throw UsageError(msg("--data ", o.data, " is not an image data set"));
    }
    if (o.index >= data->size()) {
      throw UsageError(msg("--index ", o.index, " is out of range: the ", o.split, " split of ",
                           o.data, " has ", data->size(), " images"));
    }
    const train::Example ex = data->batch({o.index});
    const int64_t c = ex.inputs.pixel_values.size(1);
    const auto stats = [&](const std::vector<double>& v) {
      return at::tensor(std::vector<float>(v.begin(), v.end())).view({c, 1, 1});
    };
    image01 = (ex.inputs.pixel_values[0].to(at::kFloat) * stats(norm.std) + stats(norm.mean)).clamp(0, 1);
    source = msg(o.data, " (", o.split, ") #", o.index, ", label ",
                 data->classes().at(static_cast<size_t>(ex.labels[0].item<int64_t>())));
  }
  const int64_t c = image01.size(0), h = image01.size(1), w = image01.size(2);
  if (static_cast<int64_t>(norm.mean.size()) != c || static_cast<int64_t>(norm.std.size()) != c) {
    throw Error(msg(o.model, ": the recorded normalisation has ", norm.mean.size(),
                    " channels, the image ", c));
  }
  const auto [qy, qx] = parse_query(o.query, h, w);
  const at::Tensor mean = at::tensor(std::vector<float>(norm.mean.begin(), norm.mean.end())).view({c, 1, 1});
  const at::Tensor sd = at::tensor(std::vector<float>(norm.std.begin(), norm.std.end())).view({c, 1, 1});
  model->to(device);
  const at::Tensor pixels = ((image01 - mean) / sd).unsqueeze(0).to(device);
  const std::vector<eval::LayerAttention> found = eval::attention_at(*model, pixels, qy, qx, layers);

  if (!o.out.empty()) {
    const draw::Figure figure = eval::attention_figure(found, image01, qy, qx);
    io::write_file_atomic(o.out, figure.encode(*draw::format_of(o.out)));
  }
  if (o.json) {
    nlohmann::json j = {{"model", o.model}, {"image", source}, {"query", {qy, qx}}};
    j["layers"] = nlohmann::json::array();
    for (const auto& l : found) j["layers"].push_back(l.to_json());
    if (!o.out.empty()) j["out"] = o.out;
    std::cout << j.dump(2) << std::endl;
    return 0;
  }
  std::printf("%s: query (%g, %g) of %lldx%lld\n", source.c_str(), qy, qx,
              static_cast<long long>(h), static_cast<long long>(w));
  for (const auto& l : found) {
    const bool refined = !l.variant.empty();
    if (refined) {
      std::printf("\n%s %s maps  (%lldx%lld patches, query patch %lld,%lld)\n", l.name.c_str(),
                  l.variant.c_str(), static_cast<long long>(l.in_h), static_cast<long long>(l.in_w),
                  static_cast<long long>(l.query_row), static_cast<long long>(l.query_col));
    } else {
      std::printf("\n%s  (%lldx%lld, stride %lld, query %lld,%lld)\n", l.name.c_str(),
                  static_cast<long long>(l.in_h), static_cast<long long>(l.in_w),
                  static_cast<long long>(l.stride), static_cast<long long>(l.query_row),
                  static_cast<long long>(l.query_col));
    }
    std::printf("%5s %8s %10s %8s %9s%s\n", "head", "gate", "peak", "weight", "distance",
                refined ? "   cls" : "");
    for (size_t i = 0; i < l.gate.size(); ++i) {
      const std::string peak = msg("(", l.peak[i].first, ",", l.peak[i].second, ")");
      std::printf("%5zu %8.4f %10s %8.4f %9.3f", i, l.gate[i], peak.c_str(), l.peak_weight[i],
                  l.distance[i]);
      if (refined) std::printf(" %6.4f", l.cls_weight[i]);
      std::printf("\n");
    }
  }
  if (!o.out.empty()) std::printf("\nwrote %s\n", o.out.c_str());
  return 0;
}

}  // namespace

Runner add_analyze(CLI::App& app) {
  auto o = std::make_shared<AnalyzeCli>();
  auto* cmd = app.add_subcommand("analyze", verb_info("analyze").summary);
  cmd->add_option("--model", o->model, "Checkpoint directory (a T-CNN or a refined ViT)")->required();
  cmd->add_option("--image", o->image, "Image file (PNG, JPEG, BMP, GIF)");
  cmd->add_option("--index", o->index, "Image N of --data's split instead of --image")
      ->check(integer_in(0, 9e15));
  cmd->add_option("--data", o->data, "With --index: named data set or path");
  cmd->add_option("--split", o->split, "With --index: train, val, test or all (default test)");
  cmd->add_option("--split-seed,--seed", o->seed, "With --index: split seed (default: the model's)")
      ->check(integer_in(0, 9e15));
  cmd->add_option("--query", o->query, "Query position ROW,COL in input pixels (default: centre)");
  cmd->add_option("--layers", o->layers, "Regex on layer names (default: every ConvAttention / refined attention)");
  cmd->add_option("--out", o->out, "Draw the attention maps: FILE.png or FILE.svg");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_flag("--json", o->json, "Print the numbers as JSON");
  return [o] { return run_analyze(*o); };
}

}  // namespace recast::cli
