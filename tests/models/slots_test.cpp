// Slots and registered recasts: a recast defined outside the families (here,
// in this test) fills the slots of every family through its config block
// alone; a slot claimed by two blocks, a block nobody reads and a name no
// slot has are refused; recipes walk what the slots recorded.

#include "recast/core/error.h"
#include "recast/models/model.h"
#include "recast/recasts/factorize.h"
#include "recast/recasts/recast.h"
#include "models/tiny.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace recast::testing {
namespace {

// A test recast: the Linear slots its block names become Linear layers whose
// output is doubled ("recast_test_double": {"layers": [names]}).
struct DoubledImpl : torch::nn::Module {
  DoubledImpl(int64_t in, int64_t out, bool bias) {
    linear = register_module("linear", torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias)));
  }
  at::Tensor forward(const at::Tensor& x) { return 2.0 * linear(x); }
  torch::nn::Linear linear{nullptr};
};
TORCH_MODULE(Doubled);

class DoubleFiller : public models::SlotFiller {
 public:
  explicit DoubleFiller(std::set<std::string> names) : names_(std::move(names)) {}
  bool claims(const models::Slot& s) const override {
    return s.kind == models::SlotKind::Linear && names_.count(s.name);
  }
  torch::nn::AnyModule build(const models::Slot& s) const override {
    return torch::nn::AnyModule(Doubled(s.in, s.out, s.bias));
  }
  void init(const models::Slot& s, torch::nn::Module& layer, const models::DenseInitFn& dense) const override {
    auto& d = dynamic_cast<DoubledImpl&>(layer);
    const models::DenseInit w = dense(s);
    d.linear->weight.copy_(w.weight * 0.5);
    if (d.linear->bias.defined() && w.bias.defined()) d.linear->bias.copy_(w.bias * 0.5);
  }
  void check_placed(const std::vector<const models::Slot*>& claimed,
                    const std::vector<models::Slot>&) const override {
    RECAST_CHECK(claimed.size() == names_.size(), "config 'recast_test_double': ",
                 names_.size() - claimed.size(), " names found no Linear slot");
  }

 private:
  std::set<std::string> names_;
};

class TestDouble : public recasts::Recast {
 public:
  std::string name() const override { return "test_double"; }
  std::string summary() const override { return "test: doubles the named Linear layers"; }
  std::string config_key() const override { return "recast_test_double"; }
  std::shared_ptr<models::SlotFiller> parse_block(const nlohmann::json& block) const override {
    return std::make_shared<DoubleFiller>(block.at("layers").get<std::set<std::string>>());
  }
  recasts::Conversion convert(models::Model& source, const recasts::RecipeOptions&) const override {
    throw UsageError(msg("test_double: no conversion for ", source.arch()));
  }
};
RECAST_REGISTER_RECAST(TestDouble);

// For each family, one Linear slot name and its tiny config.
const std::vector<std::pair<std::string, std::string>> kLinearSlots = {
    {"gpt2", "transformer.h.1.mlp.c_fc"},
    {"llama", "model.layers.0.mlp.up_proj"},
    {"vit_tiny_patch16_224", "blocks.1.mlp.fc2"},
    {"resnet18", "fc"}};

TEST(Slots, ARecastFromOutsideTheFamiliesFillsEveryFamilysSlots) {
  for (const auto& [arch, slot] : kLinearSlots) {
    SCOPED_TRACE(arch);
    auto m = tiny_model(arch, {{"recast_test_double", {{"layers", {slot}}}}}, 3);
    const nlohmann::json c = m->config();
    int built = 0;
    for (const auto& b : m->slots().built()) {
      if (b.recast == "recast_test_double") {
        ++built;
        EXPECT_EQ(b.slot.name, slot);
      }
    }
    EXPECT_EQ(built, 1);
    auto params = m->named_parameters(true);
    ASSERT_TRUE(params.contains(slot + ".linear.weight"));
    EXPECT_FALSE(params.contains(slot + ".weight"));
    EXPECT_TRUE(m->slots().recast_owned(slot + ".linear.weight"));
    // The doubled layer computes what the dense layer it stands for would:
    // copy its halved weights into a dense model and compare the logits.
    nlohmann::json dense_config = c;
    dense_config.erase("recast_test_double");
    auto dense = models::create_model(arch, dense_config);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : dense->named_parameters(true)) {
        std::string name = p.key();
        if (name.rfind(slot + ".", 0) == 0) name = slot + ".linear." + name.substr(slot.size() + 1);
        at::Tensor v = params[name];
        if (name.rfind(slot + ".linear.", 0) == 0) {
          v = 2.0 * v;
          if (v.sizes() != p.value().sizes()) v = v.t();  // GPT-2's Conv1D layout
        }
        p.value().copy_(v);
      }
      for (auto& b : dense->named_buffers(true)) b.value().copy_(m->named_buffers(true)[b.key()]);
    }
    torch::NoGradGuard no_grad;
    const auto batch = m->example_batch(2, 5);
    const at::Tensor a = m->forward(batch), b = dense->forward(batch);
    EXPECT_LT(((a - b).abs().max() / b.abs().max()).item<double>(), 1e-5);
  }
}

TEST(Slots, ConflictsAndUnplacedNamesAreRefused) {
  nlohmann::json c = models::factory_of("gpt2").tiny;
  c["recast_test_double"] = {{"layers", {"transformer.h.0.attn.c_proj"}}};
  c["recast_factorized"] = {{"layers", {{"transformer.h.0.attn.c_proj", 4}}}};
  const std::string both = error_of([&] { models::create_model("gpt2", c); });
  EXPECT_NE(both.find("'transformer.h.0.attn.c_proj' is both recast_factorized and recast_test_double"),
            std::string::npos)
      << both;
  c.erase("recast_factorized");
  c["recast_test_double"] = {{"layers", {"transformer.h.9.attn.c_proj"}}};
  EXPECT_NE(error_of([&] { models::create_model("gpt2", c); }).find("names found no Linear slot"),
            std::string::npos);
  nlohmann::json r = models::factory_of("resnet18").tiny;
  r["recast_tcnn"] = {{"layers", {"layer4.0.conv1", "conv1"}}};  // the stem is no block conv
  EXPECT_NE(error_of([&] { models::create_model("resnet18", r); })
                .find("the model has no block convolution 'conv1'"),
            std::string::npos);
  nlohmann::json t = models::factory_of("llama").tiny;
  t["recast_t2r"] = {{"feature_map", "t2r"}, {"feature_dim", 8}, {"layers", {0, 5}}};
  EXPECT_NE(error_of([&] { models::create_model("llama", t); }).find("layer 5 out of range"),
            std::string::npos);
}

// What the slots record: every swappable layer of each family, with its
// shape, and the attention cores with their projections.
TEST(Slots, FamiliesRecordTheirSwappableLayers) {
  auto gpt = models::create_model("gpt2", models::factory_of("gpt2").tiny);  // 2 layers, 32 wide
  int linear = 0, attention = 0;
  for (const auto& b : gpt->slots().built()) {
    EXPECT_EQ(b.recast, "");
    if (b.slot.kind == models::SlotKind::Linear) {
      ++linear;
      EXPECT_TRUE(b.slot.transposed);
    }
    if (b.slot.kind == models::SlotKind::Attention) {
      ++attention;
      EXPECT_EQ(b.slot.attention.heads, 4);
      EXPECT_EQ(b.slot.attention.head_dim, 8);
      EXPECT_EQ(b.slot.key.slot, b.slot.name + ".c_attn");
      EXPECT_EQ(b.slot.key.row, 32);
    }
  }
  EXPECT_EQ(linear, 8);
  EXPECT_EQ(attention, 2);
  EXPECT_EQ(recasts::factorizable_layers(*gpt).size(), 8u);
  auto resnet = models::create_model("resnet18", models::factory_of("resnet18").tiny);
  int blocks = 0, convs = 0;
  for (const auto& b : resnet->slots().built()) {
    convs += b.slot.kind == models::SlotKind::Conv2d;
    blocks += b.slot.role == "block";
  }
  EXPECT_EQ(blocks, 16);         // 8 BasicBlocks x 2
  EXPECT_EQ(convs, 16 + 1 + 4);  // + the stem + a downsample per stage (channels 4, 8, 8, 8 after a 64-wide stem)
}

}  // namespace
}  // namespace recast::testing
