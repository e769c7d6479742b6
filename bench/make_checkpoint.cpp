// make_checkpoint OUT --size BYTES|--layers N [--width D] [--dtype f32|bf16|f16]
//                    [--max-shard-size SIZE] [--seed S]
// make_checkpoint OUT --arch NAME --config FILE.json [--dtype ...] [--max-shard-size SIZE] [--seed S]
//
// Writes a checkpoint with GPT-2's tensor layout (transformers' names and
// shapes; random N(0, 0.02) weights) for the demo and the inspect benchmark.
// With --size the number of layers grows until the weights reach SIZE.
// OUT ending in .safetensors is a single file; anything else is a directory.
// With --arch: a registered family at FILE's config (e.g. Llama-3.2-1B's),
// built and initialised in --dtype by the family itself (fresh weights),
// saved as a checkpoint directory (config.json + shards): the load benchmark.

#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/io/checkpoint.h"
#include "recast/io/json_strict.h"
#include "recast/models/model.h"

#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

void add_layer(recast::io::NamedTensors& out, int i, int64_t d, at::TensorOptions opt) {
  const std::string p = "transformer.h." + std::to_string(i) + ".";
  auto w = [&](std::vector<int64_t> shape) { return torch::randn(shape, opt) * 0.02; };
  out.emplace_back(p + "ln_1.weight", torch::ones({d}, opt));
  out.emplace_back(p + "ln_1.bias", torch::zeros({d}, opt));
  out.emplace_back(p + "attn.c_attn.weight", w({d, 3 * d}));
  out.emplace_back(p + "attn.c_attn.bias", torch::zeros({3 * d}, opt));
  out.emplace_back(p + "attn.c_proj.weight", w({d, d}));
  out.emplace_back(p + "attn.c_proj.bias", torch::zeros({d}, opt));
  out.emplace_back(p + "ln_2.weight", torch::ones({d}, opt));
  out.emplace_back(p + "ln_2.bias", torch::zeros({d}, opt));
  out.emplace_back(p + "mlp.c_fc.weight", w({d, 4 * d}));
  out.emplace_back(p + "mlp.c_fc.bias", torch::zeros({4 * d}, opt));
  out.emplace_back(p + "mlp.c_proj.weight", w({4 * d, d}));
  out.emplace_back(p + "mlp.c_proj.bias", torch::zeros({d}, opt));
}

int usage() {
  std::fprintf(
      stderr,
      "usage: make_checkpoint OUT (--size BYTES | --layers N) [--width D] [--vocab V]\n"
      "                       [--dtype f32|bf16|f16] [--max-shard-size SIZE] [--seed S]\n"
      "       make_checkpoint OUT --arch NAME --config FILE.json [--dtype ...] [--max-shard-size SIZE]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string out = argv[1];
  uint64_t size = 0;
  int layers = 0;
  int64_t width = 768;
  int64_t vocab = 50257;
  uint64_t max_shard = 5'000'000'000ULL;
  std::string dtype = "f32", arch, config_file;
  uint64_t seed = 0;
  try {
    for (int i = 2; i < argc; ++i) {
      std::string a = argv[i];
      if (i + 1 >= argc) return usage();
      std::string v = argv[++i];
      if (a == "--size")
        size = recast::io::parse_byte_size(v);
      else if (a == "--layers")
        layers = std::stoi(v);
      else if (a == "--width")
        width = std::stoll(v);
      else if (a == "--vocab")
        vocab = std::stoll(v);
      else if (a == "--dtype")
        dtype = v;
      else if (a == "--max-shard-size")
        max_shard = recast::io::parse_byte_size(v);
      else if (a == "--seed")
        seed = std::stoull(v);
      else if (a == "--arch")
        arch = v;
      else if (a == "--config")
        config_file = v;
      else
        return usage();
    }
    if (!arch.empty()) {
      if (config_file.empty()) return usage();
      torch::manual_seed(seed);
      recast::models::ModelPtr model;
      {
        const recast::models::ScopedDefaultDtype in_dtype(recast::parse_dtype(dtype));
        model = recast::models::create_model(arch, recast::io::read_json_file(config_file));
        model->init_weights();
      }
      recast::models::save_model(*model, out, max_shard);
      uint64_t n = 0;
      for (const auto& t : recast::models::state_dict_for_save(*model)) n += static_cast<uint64_t>(t.second.nbytes());
      std::printf("wrote %s: %s, %llu bytes of weights\n", out.c_str(), arch.c_str(), static_cast<unsigned long long>(n));
      return 0;
    }
    if ((size == 0) == (layers == 0)) return usage();
    torch::manual_seed(seed);
    auto opt = at::TensorOptions().dtype(recast::parse_dtype(dtype));
    recast::io::NamedTensors tensors;
    tensors.emplace_back("transformer.wte.weight", torch::randn({vocab, width}, opt) * 0.02);
    tensors.emplace_back("transformer.wpe.weight", torch::randn({1024, width}, opt) * 0.01);
    tensors.emplace_back("transformer.ln_f.weight", torch::ones({width}, opt));
    tensors.emplace_back("transformer.ln_f.bias", torch::zeros({width}, opt));
    auto bytes = [&] {
      uint64_t n = 0;
      for (const auto& t : tensors) n += static_cast<uint64_t>(t.second.nbytes());
      return n;
    };
    for (int i = 0; layers ? i < layers : bytes() < size; ++i) add_layer(tensors, i, width, opt);
    if (recast::ends_with(out, ".safetensors")) {
      recast::io::save_safetensors(out, tensors, {{"format", "pt"}});
    } else {
      recast::io::save_weights(out, tensors, {{"format", "pt"}}, max_shard);
    }
    std::printf("wrote %s: %zu tensors, %llu bytes\n", out.c_str(), tensors.size(),
                static_cast<unsigned long long>(bytes()));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_checkpoint: error: %s\n", e.what());
    return 1;
  }
}
