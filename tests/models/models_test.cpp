// The model zoo against its reference libraries: every fixture in
// tests/fixtures (made by tools/make_fixtures.py with transformers / timm) is
// loaded, run, and compared in fp32 (relative error <= 1e-5: max |ours - ref|
// over max |ref|), intermediates included; load -> save is bit-exact; KV-cache
// decoding equals the full forward; every registered architecture runs forward
// and backward with random weights; bad checkpoints and inputs give errors that
// name the tensor.

#include "recast/core/error.h"
#include "recast/io/checkpoint.h"
#include "recast/io/json_strict.h"
#include "recast/models/model.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

namespace recast::testing {
namespace {

namespace fs = std::filesystem;
const std::string kFixtures = std::string(RECAST_SOURCE_DIR) + "/tests/fixtures";

double relative_error(const at::Tensor& ours, const at::Tensor& ref) {
  at::Tensor a = ours.to(at::kDouble), b = ref.to(at::kDouble);
  double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / (scale > 0 ? scale : 1.0);
}

std::vector<std::string> fixture_names() {
  auto manifest = io::read_json_file(kFixtures + "/manifest.json");
  auto names = manifest["fixtures"].get<std::vector<std::string>>();
  // Llama 3 / Qwen2 / Mistral (tools/make_fixtures.py --decoders-only)
  for (const auto& n : manifest.at("decoders")) names.push_back(n.get<std::string>());
  return names;
}

models::Batch read_inputs(const std::string& dir) {
  io::TensorStore inputs = io::TensorStore::open(dir + "/inputs.safetensors");
  models::Batch batch;
  if (inputs.find("input_ids")) batch.input_ids = inputs.tensor("input_ids", true);
  if (inputs.find("attention_mask")) batch.attention_mask = inputs.tensor("attention_mask", true);
  if (inputs.find("pixel_values")) batch.pixel_values = inputs.tensor("pixel_values", true);
  return batch;
}

class Fixture : public ::testing::TestWithParam<std::string> {};

TEST_P(Fixture, MatchesReferenceLibraryInFp32) {
  const std::string dir = kFixtures + "/" + GetParam();
  models::ModelPtr model = models::load_model(dir);
  models::Recorder recorder(".*");
  torch::NoGradGuard no_grad;
  at::Tensor logits = model->forward(read_inputs(dir), &recorder);
  io::TensorStore ref = io::TensorStore::open(dir + "/outputs.safetensors");
  double err = relative_error(logits, ref.tensor("logits"));
  EXPECT_LE(err, 1e-5) << GetParam() << " logits";
  int compared = 0;
  for (const auto& [name, value] : recorder.tensors()) {
    if (!ref.find(name)) continue;
    double e = relative_error(value, ref.tensor(name));
    EXPECT_LE(e, 1e-5) << GetParam() << " intermediate " << name;
    ++compared;
  }
  EXPECT_EQ(compared + 1, static_cast<int>(ref.entries().size()))
      << "every reference intermediate has a recast counterpart";
  std::printf("[ %-18s ] logits rel err %.2e, %d intermediates compared\n", GetParam().c_str(), err,
              compared);
}

TEST_P(Fixture, LoadThenSaveIsBitExact) {
  const std::string dir = kFixtures + "/" + GetParam();
  models::ModelPtr model = models::load_model(dir);
  TempDir out;
  models::save_model(*model, out.path());
  EXPECT_EQ(read_bytes(out.file("model.safetensors")), read_bytes(dir + "/model.safetensors"));
  models::ModelPtr again = models::load_model(out.path());
  EXPECT_EQ(again->arch(), model->arch());
}

INSTANTIATE_TEST_SUITE_P(Reference, Fixture, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// Loading adopts the memory-mapped tensors whose dtype matches (no second
// copy): a bf16 checkpoint loaded as bf16 gives exactly the fp32-loaded
// model cast to bf16, and writing into an adopted parameter (training) never
// reaches the file (the mapping is private, copy-on-write).
TEST(Models, LoadingInTheCheckpointsDtypeAdoptsTheMappedWeights) {
  TempDir bf16;
  {
    models::ModelPtr m = models::load_model(kFixtures + "/llama_gqa");
    m->to(at::kBFloat16);
    models::save_model(*m, bf16.path());
  }
  const std::string bytes = read_bytes(bf16.file("model.safetensors"));
  models::LoadOptions o;
  o.dtype = at::kBFloat16;
  models::ModelPtr adopted = models::load_model(bf16.path(), o);
  models::ModelPtr widened = models::load_model(bf16.path());
  for (const auto& p : adopted->named_parameters(true)) EXPECT_EQ(p.value().scalar_type(), at::kBFloat16) << p.key();
  widened->to(at::kBFloat16);
  torch::NoGradGuard no_grad;
  const models::Batch batch = read_inputs(kFixtures + "/llama_gqa");
  EXPECT_TRUE(adopted->forward(batch).equal(widened->forward(batch)));
  for (auto& p : adopted->named_parameters(true)) p.value().add_(1.0);
  EXPECT_EQ(read_bytes(bf16.file("model.safetensors")), bytes);
  EXPECT_FALSE(adopted->forward(batch).equal(widened->forward(batch)));
}

TEST(Models, BareSafetensorsFileWithArchAndOverrides) {
  const std::string dir = kFixtures + "/resnet18_timm";
  models::ModelPtr model = models::load_model(
      dir + "/model.safetensors",
      {"resnet18", {"num_classes=10", "in_chans=1", "channels=[8,16,32,64]"}, true, {}});
  torch::NoGradGuard no_grad;
  at::Tensor logits = model->forward(read_inputs(dir));
  io::TensorStore ref = io::TensorStore::open(dir + "/outputs.safetensors");
  EXPECT_LE(relative_error(logits, ref.tensor("logits")), 1e-5);
}

// (Dynamic RoPE is left out: transformers recomputes its frequencies for
// each forward's longest position, so cached keys keep the rotation of the
// step that made them, as they do there.)
TEST(Models, KvCacheDecodingEqualsFullForward) {
  for (const char* name : {"gpt2", "llama_gqa", "llama_tied_headdim", "llama3_rope", "llama_rope_linear",
                           "llama_rope_yarn", "qwen2_window", "mistral_window"}) {
    models::ModelPtr model = models::load_model(kFixtures + "/" + name);
    torch::NoGradGuard no_grad;
    at::Tensor ids = read_inputs(kFixtures + "/" + name).input_ids;
    at::Tensor full = model->forward({ids, {}, {}, {}, {}});
    models::KVCache cache;
    std::vector<at::Tensor> steps = {model->forward({ids.slice(1, 0, 5), {}, {}, {}, {}}, nullptr, &cache)};
    for (int64_t t = 5; t < ids.size(1); ++t) {
      steps.push_back(model->forward({ids.slice(1, t, t + 1), {}, {}, {}, {}}, nullptr, &cache));
    }
    EXPECT_EQ(cache.length(), ids.size(1));
    EXPECT_LE(relative_error(at::cat(steps, 1), full), 1e-5) << name;
  }
}

TEST(Models, EveryRegisteredArchitectureRunsForwardAndBackward) {
  auto names = models::model_registry().names();
  EXPECT_GE(names.size(), 4u);
  for (const std::string& arch : names) {
    SCOPED_TRACE(arch);
    models::ModelPtr model = models::create_model(arch, models::factory_of(arch).tiny);
    model->train();
    at::Tensor logits = model->forward(model->example_batch(2, 7));
    ASSERT_TRUE(at::isfinite(logits).all().item<bool>());
    logits.pow(2).mean().backward();
    int64_t with_grad = 0;
    for (const auto& p : model->parameters()) {
      if (!p.grad().defined()) continue;
      ASSERT_TRUE(at::isfinite(p.grad()).all().item<bool>());
      ++with_grad;
    }
    // Every parameter takes part (none is left out of the graph).
    EXPECT_EQ(with_grad, static_cast<int64_t>(model->parameters().size()));
  }
}

// The declared config of every family: an unknown key (a typo of a real one
// names it), a zero / negative / absurd size, a head count that does not
// divide the width, and a model too large for this machine are refused
// before anything is allocated, with one line naming the key.
TEST(Models, EveryFamilyRefusesBadConfigsNamingTheKey) {
  for (const auto& [arch, item] : models::model_registry().items()) {
    SCOPED_TRACE(arch);
    const models::ModelFactory& f = item.factory;
    auto refused = [&](const std::string& key, const nlohmann::json& value) {
      nlohmann::json c = f.tiny;
      models::set_config_value(c, arch, key, value);
      return error_of([&] { models::create_model(arch, c); });
    };
    auto one_line = [](const std::string& e) { return e.find('\n') == std::string::npos && !e.empty(); };
    const std::string unknown = refused("no_such_key", 1);
    EXPECT_NE(unknown.find("no_such_key' is not a key of this model"), std::string::npos) << unknown;
    EXPECT_TRUE(one_line(unknown));
    int sizes = 0, heads = 0;
    for (const auto& k : f.spec.keys) {
      if (k.type != models::KeyType::Int || k.min < 1 || !k.read) continue;
      ++sizes;
      // A typo of the key names it.
      const std::string typo = refused(k.name + "s", 2);
      EXPECT_NE(typo.find("did you mean '" + k.name + "'"), std::string::npos) << typo;
      for (const nlohmann::json& bad : {nlohmann::json(0), nlohmann::json(-3), nlohmann::json(int64_t{1} << 40)}) {
        if (bad.get<int64_t>() >= k.min && bad.get<int64_t>() <= k.max) continue;
        const std::string e = refused(k.name, bad);
        EXPECT_NE(e.find("'" + k.name + "'"), std::string::npos) << e;
        EXPECT_TRUE(one_line(e)) << e;
      }
      EXPECT_NE(refused(k.name, 2.5).find("'" + k.name + "': expected an integer"), std::string::npos);
      // T5's heads divide nothing (their width is num_heads x d_kv).
      const bool t5 = arch == "t5" || arch == "mt5";
      if (k.name.find("head") != std::string::npos && k.name != "head_dim" && !t5) {
        // 3 does not divide the tiny configs' widths (32).
        ++heads;
        const std::string e = refused(k.name, 3);
        EXPECT_NE(e.find("is not a multiple of"), std::string::npos) << e;
        EXPECT_NE(e.find("'"), std::string::npos) << e;
      }
    }
    EXPECT_GE(sizes, 2);
    const bool llama_like = arch == "llama" || arch == "qwen2" || arch == "mistral";
    if (arch == "gpt2" || llama_like || arch.rfind("vit", 0) == 0) {
      EXPECT_GE(heads, 1);
    }
    // Within every range, but far beyond this machine's memory: the
    // parameter estimate refuses it.
    const bool t5 = arch == "t5" || arch == "mt5";
    const std::string big = arch == "gpt2"    ? "n_layer"
                            : llama_like ? "num_hidden_layers"
                            : arch.rfind("vit", 0) == 0 ? "depth"
                            : t5                        ? "num_layers"
                                                         : "";
    if (!big.empty()) {
      nlohmann::json c = f.tiny;
      models::set_config_value(c, arch, big, 4000);
      models::set_config_value(c, arch,
                               arch == "gpt2" ? "n_embd" : llama_like ? "hidden_size" : t5 ? "d_model" : "embed_dim",
                               16384);
      const std::string e = error_of([&] { models::create_model(arch, c); });
      EXPECT_NE(e.find("parameters"), std::string::npos) << e;
    }
  }
}

// --set n_layers=1 on a transformers config and model_args typos on timm's.
TEST(Models, OverridesAreValidatedWithTheConfig) {
  const std::string dir = kFixtures + "/gpt2";
  EXPECT_NE(error_of([&] { models::load_model(dir, {"", {"n_layers=1"}, true, {}}); })
                .find("did you mean 'n_layer'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { models::load_model(dir, {"", {"n_head=0"}, true, {}}); }).find("'n_head'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { models::load_model(kFixtures + "/resnet18_timm", {"", {"chanels=[1,2,3,4]"}, true, {}}); })
                .find("'model_args.chanels' is not a key of this model (did you mean 'channels'?)"),
            std::string::npos);
  // A recast block nobody reads.
  EXPECT_NE(error_of([&] { models::load_model(dir, {"", {"recast_nope={}"}, true, {}}); })
                .find("'recast_nope': no recast reads this block"),
            std::string::npos);
}

std::string load_error(const std::string& path, const models::LoadOptions& options = {}) {
  return error_of([&] { models::load_model(path, options); });
}

TEST(Models, LoadErrorsNameTheTensorsAndExpectedShapes) {
  const std::string src = kFixtures + "/gpt2";
  TempDir dir;
  fs::copy_file(src + "/config.json", dir.file("config.json"));
  io::TensorStore store = io::TensorStore::open(src);
  io::NamedTensors tensors = store.load_all(/*copy=*/true);
  for (auto& [name, t] : tensors) {
    if (name == "transformer.h.1.mlp.c_fc.weight") t = t.narrow(1, 0, 10).contiguous();
  }
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& nt) { return nt.first == "transformer.ln_f.bias"; }),
                tensors.end());
  tensors.emplace_back("transformer.extra.weight", at::ones({2}));
  io::save_weights(dir.path(), tensors);
  std::string error = load_error(dir.path());
  EXPECT_NE(error.find("1 missing: transformer.ln_f.bias"), std::string::npos) << error;
  EXPECT_NE(error.find("1 unexpected: transformer.extra.weight"), std::string::npos) << error;
  EXPECT_NE(error.find("transformer.h.1.mlp.c_fc.weight: expected [48, 192] found [48, 10]"),
            std::string::npos)
      << error;

  EXPECT_NE(load_error(src + "/model.safetensors").find("--arch"), std::string::npos);
  EXPECT_NE(
      load_error(src, {"nonexistent_arch", {}, true, {}}).find("unknown model 'nonexistent_arch'"),
      std::string::npos);
}

TEST(Models, ReadsTransformers4StyleConfigs) {
  // transformers 4.x keeps rope_theta at the top level (rope_scaling null);
  // 5.x moves it into rope_parameters. Both must give the same model.
  const std::string src = kFixtures + "/llama_gqa";
  TempDir dir;
  fs::copy_file(src + "/model.safetensors", dir.file("model.safetensors"));
  auto config = io::read_json_file(src + "/config.json");
  double theta = config["rope_parameters"]["rope_theta"];
  config.erase("rope_parameters");
  config["rope_theta"] = theta;
  config["rope_scaling"] = nullptr;
  config["transformers_version"] = "4.46.0";
  write_bytes(dir.file("config.json"), config.dump());
  torch::NoGradGuard no_grad;
  models::Batch batch = read_inputs(src);
  at::Tensor v4 = models::load_model(dir.path())->forward(batch);
  at::Tensor v5 = models::load_model(src)->forward(batch);
  EXPECT_TRUE(at::equal(v4, v5));
}

TEST(Models, BadConfigsAndInputsAreNamed) {
  TempDir dir;
  fs::copy_file(kFixtures + "/llama_gqa/model.safetensors", dir.file("model.safetensors"));
  auto config = io::read_json_file(kFixtures + "/llama_gqa/config.json");
  config["rope_parameters"] = {{"rope_type", "longrope"}, {"rope_theta", 10000.0}};
  write_bytes(dir.file("config.json"), config.dump());
  EXPECT_NE(load_error(dir.path()).find("rope_parameters.rope_type': 'longrope' is not supported"), std::string::npos)
      << load_error(dir.path());

  models::ModelPtr model = models::load_model(kFixtures + "/gpt2");
  at::Tensor ids = at::tensor({1, 2, 96}, at::kLong).view({1, 3});
  try {
    model->forward({ids, {}, {}, {}, {}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 96 at [0, 2] is outside the vocabulary [0, 96)"),
              std::string::npos)
        << e.what();
  }
  models::ModelPtr vit = models::load_model(kFixtures + "/vit_tiny_timm");
  EXPECT_THROW(vit->forward({{}, {}, at::zeros({1, 3, 48, 48}), {}, {}}), Error);
}

}  // namespace
}  // namespace recast::testing
