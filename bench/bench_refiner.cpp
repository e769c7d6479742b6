// bench_refiner [--device cuda] [--iters 20] [--bf16 | --fp32]
//
// Refiner's cost (issue 17): a one-block ViT (patch embedding, one block,
// head) refined against the same ViT plain, forward + backward (loss =
// logits.sum()), under bf16 autocast as fine-tuning runs it (fp32 weights),
// at two sizes:
//   vit_s16_224   ViT-S/16 at 224 px: width 384, 6 heads, N = 197, batch 64
//   vit_tiny_fm   the Fashion-MNIST ViT-tiny of docs/results.md: patch 4 on
//                 28 x 28 (N = 50), width 192, 3 heads, batch 256
// and, for each, the pieces: the attention core alone (q, k, v -> out; plain:
// the softmax core, flash / SDPA; refined: explicit maps, refiner, A'V), and
// the refiner alone (maps -> refined maps). The refiner runs with its gates
// at 0.5 (the compute does not depend on them). Also the peak memory of one
// forward + backward of each model. Median of --iters timed runs after 3
// warm-up runs, CUDA synchronised before each clock read; one JSON line per
// size. The refined block's time over the plain one's is "ratio".

#include "recast/core/device.h"
#include "recast/layers/refiner.h"
#include "recast/models/model.h"
#include "recast/train/autocast.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

double median_ms(const c10::Device& d, int64_t iters, const std::function<void()>& fn) {
  auto sync = [&] {
    if (d.is_cuda()) torch::cuda::synchronize();
  };
  for (int i = 0; i < 3; ++i) fn();
  sync();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Size {
  const char* name;
  int64_t img, patch, chans, width, heads, batch;
};

nlohmann::json vit_config(const Size& s, bool refined) {
  const std::string arch = "vit_small_patch16_224";
  nlohmann::json c = nlohmann::json::object();
  for (const auto& [key, value] : std::vector<std::pair<std::string, int64_t>>{
           {"img_size", s.img}, {"patch_size", s.patch}, {"in_chans", s.chans},
           {"embed_dim", s.width}, {"depth", 1}, {"num_heads", s.heads}, {"num_classes", 10}}) {
    recast::models::set_config_value(c, arch, key, value);
  }
  if (refined) c["recast_refiner"] = {{"layers", {0}}, {"expansion", 3}, {"kernel", 3}, {"norm", "bn"}};
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cuda";
  int64_t iters = 20;
  bool bf16 = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--iters" && i + 1 < argc) iters = std::stoll(argv[++i]);
    else if (a == "--bf16") bf16 = true;
    else if (a == "--fp32") bf16 = false;
    else {
      std::fprintf(stderr, "bench_refiner: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const c10::Device dev = recast::select_device(device);
    const bool autocast = bf16 && dev.is_cuda();
    const Size sizes[] = {{"vit_s16_224", 224, 16, 3, 384, 6, 64}, {"vit_tiny_fm", 28, 4, 1, 192, 3, 256}};
    for (const Size& s : sizes) {
      const int64_t n = (s.img / s.patch) * (s.img / s.patch) + 1, d = s.width / s.heads;
      nlohmann::json j = {{"size", s.name}, {"tokens", n}, {"width", s.width}, {"heads", s.heads},
                          {"batch", s.batch}, {"autocast_bf16", autocast}};
      auto opts = torch::TensorOptions().device(dev);
      const at::Tensor pixels = torch::randn({s.batch, s.chans, s.img, s.img}, opts);
      double model_ms[2] = {0, 0};
      for (int refined = 0; refined < 2; ++refined) {
        torch::manual_seed(0);
        recast::models::ModelPtr m = recast::models::create_model("vit_small_patch16_224", vit_config(s, refined));
        m->to(dev);
        m->train();
        if (refined) {
          torch::NoGradGuard g;
          for (auto& p : m->named_parameters()) {
            if (p.key().find(".gate") != std::string::npos) p.value().fill_(0.5);
          }
        }
        recast::models::Batch batch;
        batch.pixel_values = pixels;
        auto step = [&] {
          at::Tensor loss;
          {
            recast::train::AutocastGuard ag(autocast);
            loss = m->forward(batch).to(at::kFloat).sum();
          }
          loss.backward();
        };
        model_ms[refined] = median_ms(dev, iters, step);
        recast::take_peak_allocated_mb(dev);
        step();
        if (dev.is_cuda()) torch::cuda::synchronize();
        j[refined ? "refined_peak_mb" : "plain_peak_mb"] = recast::take_peak_allocated_mb(dev);
        m->zero_grad();
      }
      j["plain_block_ms"] = model_ms[0];
      j["refined_block_ms"] = model_ms[1];
      j["ratio"] = model_ms[1] / model_ms[0];

      // The attention core alone, and the refiner alone.
      const auto dtype = autocast ? at::kBFloat16 : at::kFloat;
      auto qkv = [&] {
        return torch::randn({s.batch, s.heads, n, d}, opts.dtype(dtype)).requires_grad_(true);
      };
      const at::Tensor q = qkv(), k = qkv(), v = qkv();
      recast::layers::AttentionSpec spec;
      spec.heads = spec.kv_heads = s.heads;
      spec.head_dim = d;
      spec.scale = 1.0 / std::sqrt(static_cast<double>(d));
      auto plain = std::make_shared<recast::layers::SoftmaxAttentionImpl>(spec);
      recast::layers::RefinerOptions ro;
      ro.heads = s.heads;
      recast::layers::RefinedAttention refined(spec, ro);
      refined->to(dev, dtype);
      {
        torch::NoGradGuard g;
        refined->refiner->gate.fill_(0.5);
      }
      refined->train();
      const recast::ops::AttentionMask none{};
      const double plain_core = median_ms(dev, iters, [&] {
        plain->forward(q, k, v, none, nullptr).to(at::kFloat).sum().backward();
      });
      const double refined_core = median_ms(dev, iters, [&] {
        refined->forward(q, k, v, none, nullptr).to(at::kFloat).sum().backward();
      });
      const at::Tensor maps = at::softmax(torch::randn({s.batch, s.heads, n, n}, opts), -1)
                                  .to(dtype)
                                  .requires_grad_(true);
      const double refiner_ms = median_ms(dev, iters, [&] {
        refined->refiner->forward(maps).to(at::kFloat).sum().backward();
      });
      {  // The fast path on this device against the explicit one (in double, 4 maps).
        recast::layers::MapRefiner check(ro);
        check->to(dev, at::kDouble);
        check->train();
        {
          torch::NoGradGuard g;
          check->gate.fill_(0.5);
        }
        const at::Tensor a = maps.detach().narrow(0, 0, 4).to(at::kDouble).requires_grad_(true);
        const at::Tensor w = torch::randn_like(a);
        const at::Tensor ref = check->forward_reference(a);
        (ref * w).sum().backward();
        const at::Tensor ref_grad = a.grad().clone();
        a.mutable_grad().zero_();
        const at::Tensor fast = check->forward(a);
        (fast * w).sum().backward();
        auto rel = [](const at::Tensor& x, const at::Tensor& y) {
          return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item<double>();
        };
        j["check_forward_rel"] = rel(fast.detach(), ref.detach());
        j["check_dmaps_rel"] = rel(a.grad(), ref_grad);
      }
      j["plain_core_ms"] = plain_core;
      j["refined_core_ms"] = refined_core;
      j["refiner_ms"] = refiner_ms;
      j["refiner_share_of_refined_block"] = refiner_ms / model_ms[1];
      // What the maps' own traffic costs at the least: the refiner reads and
      // writes [B, rH, N, N] a few times; here one pass over the expansion.
      j["expanded_map_mb"] = static_cast<double>(s.batch * 3 * s.heads * n * n) *
                             (autocast ? 2.0 : 4.0) / 1e6;
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_refiner: %s\n", e.what());
    return 1;
  }
  return 0;
}
