#include "recast/train/optim.h"

#include "recast/core/error.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace recast::train {

std::vector<ParamGroup> default_param_groups(
    const std::vector<std::pair<std::string, at::Tensor>>& trainable, double weight_decay,
    const std::set<std::string>& no_decay_names) {
  ParamGroup decay{"decay", weight_decay, {}, {}}, no_decay{"no_decay", 0.0, {}, {}};
  for (const auto& [name, p] : trainable) {
    const bool is_embedding = name.find("embed") != std::string::npos ||
                              name.find("wte") != std::string::npos ||
                              name.find("wpe") != std::string::npos ||
                              name.find("cls_token") != std::string::npos;
    const bool is_norm = name.find("norm") != std::string::npos ||
                         name.find("ln_") != std::string::npos ||
                         name.find(".bn") != std::string::npos ||
                         name.rfind("bn", 0) == 0 || name.find("downsample.1") != std::string::npos;
    const bool excluded = no_decay_names.count(name) != 0;
    ParamGroup& g = (p.dim() >= 2 && !is_embedding && !is_norm && !excluded) ? decay : no_decay;
    g.names.push_back(name);
    g.params.push_back(p);
  }
  std::vector<ParamGroup> out;
  for (auto* g : {&decay, &no_decay}) {
    if (!g->params.empty()) out.push_back(std::move(*g));
  }
  return out;
}

AdamW::AdamW(std::vector<ParamGroup> groups, Options options)
    : groups_(std::move(groups)), options_(options) {
  for (const auto& g : groups_) {
    std::vector<at::Tensor> m, v;
    for (const auto& p : g.params) {
      m.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
      v.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    }
    exp_avg_.push_back(std::move(m));
    exp_avg_sq_.push_back(std::move(v));
  }
}

void AdamW::zero_grad() {
  for (auto& g : groups_) {
    for (auto& p : g.params) {
      if (p.grad().defined()) {
        p.mutable_grad().detach_();
        p.mutable_grad().zero_();
      }
    }
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bias1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(steps_)));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& g = groups_[gi];
    std::vector<at::Tensor> params, grads, m, v;
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!owned(gi, i)) continue;                  // another rank's share
      if (!g.params[i].grad().defined()) continue;  // unused this step
      params.push_back(g.params[i]);
      grads.push_back(g.params[i].grad());
      m.push_back(exp_avg_[gi][i]);
      v.push_back(exp_avg_sq_[gi][i]);
    }
    if (params.empty()) continue;
    // The same arithmetic, in the same order, as torch.optim.AdamW.
    if (g.weight_decay != 0.0) at::_foreach_mul_(params, 1.0 - lr * g.weight_decay);
    at::_foreach_mul_(m, b1);
    at::_foreach_add_(m, grads, 1.0 - b1);
    at::_foreach_mul_(v, b2);
    at::_foreach_addcmul_(v, grads, grads, 1.0 - b2);
    std::vector<at::Tensor> denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, bias2_sqrt);
    at::_foreach_add_(denom, options_.eps);
    at::_foreach_addcdiv_(params, m, denom, -lr / bias1);
  }
  if (!comm_) return;
  // Each share from its owner (a parameter unused this step is unchanged
  // everywhere, so it travels as it is).
  for (int r = 0; r < comm_->world_size(); ++r) {
    std::vector<at::Tensor> share;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
        if (owner_[gi][i] == r) share.push_back(groups_[gi].params[i]);
      }
    }
    if (!share.empty()) comm_->broadcast(share, r);
  }
}

bool AdamW::owned(size_t group, size_t i) const {
  return !comm_ || owner_[group][i] == comm_->rank();
}

void AdamW::shard(std::shared_ptr<Communicator> comm) {
  comm_ = std::move(comm);
  const int n = comm_->world_size();
  // Largest first to the least loaded rank (ties: the lower rank), the same on every rank.
  std::vector<std::pair<size_t, size_t>> all;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) all.emplace_back(gi, i);
  }
  std::stable_sort(all.begin(), all.end(), [&](const auto& a, const auto& b) {
    return groups_[a.first].params[a.second].numel() > groups_[b.first].params[b.second].numel();
  });
  std::vector<int64_t> load(static_cast<size_t>(n), 0);
  owner_.assign(groups_.size(), {});
  for (size_t gi = 0; gi < groups_.size(); ++gi) owner_[gi].assign(groups_[gi].params.size(), 0);
  for (const auto& [gi, i] : all) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner_[gi][i] = static_cast<int>(r);
    load[r] += groups_[gi].params[i].numel();
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      if (!owned(gi, i)) exp_avg_[gi][i] = exp_avg_sq_[gi][i] = at::Tensor();
    }
  }
}

int64_t AdamW::state_numel() const {
  int64_t n = 0;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
      if (exp_avg_[gi][i].defined()) n += exp_avg_[gi][i].numel() + exp_avg_sq_[gi][i].numel();
    }
  }
  return n;
}

io::NamedTensors AdamW::state() const {
  // Sharded: every share's moments from its owner, on every rank.
  std::vector<std::vector<at::Tensor>> m = exp_avg_, v = exp_avg_sq_;
  if (comm_) {
    for (int r = 0; r < comm_->world_size(); ++r) {
      std::vector<at::Tensor> share;
      for (size_t gi = 0; gi < groups_.size(); ++gi) {
        for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
          if (owner_[gi][i] != r) continue;
          for (auto* t : {&m[gi][i], &v[gi][i]}) {
            if (r == comm_->rank()) {
              *t = t->clone();
            } else {
              *t = at::zeros_like(groups_[gi].params[i], at::MemoryFormat::Contiguous);
            }
            share.push_back(*t);
          }
        }
      }
      if (!share.empty()) comm_->broadcast(share, r);
    }
  }
  io::NamedTensors out;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].names.size(); ++i) {
      out.emplace_back("exp_avg/" + groups_[gi].names[i], m[gi][i].to(at::kCPU).contiguous());
      out.emplace_back("exp_avg_sq/" + groups_[gi].names[i], v[gi][i].to(at::kCPU).contiguous());
    }
  }
  out.emplace_back("step", at::full({}, steps_, at::kLong));
  return out;
}

void AdamW::load_state(const io::NamedTensors& state) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  // Checked against the parameter (moments have its shape and dtype); copied
  // where this rank holds the moment.
  auto take = [&](const std::string& name, const at::Tensor& param, at::Tensor& into) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw Error(msg("optimizer state: no tensor ", quote(name)));
    if (it->second.sizes() != param.sizes() || it->second.scalar_type() != param.scalar_type()) {
      throw Error(msg("optimizer state: tensor ", quote(name), ": expected ", param.scalar_type(),
                      " ", shape_string(param.sizes()), ", found ", it->second.scalar_type(), " ",
                      shape_string(it->second.sizes())));
    }
    torch::NoGradGuard no_grad;
    if (into.defined()) into.copy_(it->second);
    by_name.erase(it);
  };
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < groups_[gi].names.size(); ++i) {
      take("exp_avg/" + groups_[gi].names[i], groups_[gi].params[i], exp_avg_[gi][i]);
      take("exp_avg_sq/" + groups_[gi].names[i], groups_[gi].params[i], exp_avg_sq_[gi][i]);
    }
  }
  auto step = by_name.find("step");
  if (step == by_name.end() || step->second.numel() != 1) {
    throw Error("optimizer state: no scalar tensor 'step'");
  }
  steps_ = step->second.to(at::kLong).item<int64_t>();
  by_name.erase(step);
  if (!by_name.empty()) {
    throw Error(msg("optimizer state: unexpected tensor ", quote(by_name.begin()->first),
                    " (trained parameters differ from this run's --train)"));
  }
}

double cosine_lr(int64_t step, int64_t total, int64_t warmup, double peak, double min_ratio) {
  if (warmup > 0 && step < warmup) {
    return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  const int64_t span = std::max<int64_t>(1, total - warmup);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * cosine);
}

at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(at::kFloat).norm());
  }
  if (norms.empty()) return at::zeros({}, at::kFloat);
  at::Tensor total = at::stack(norms).norm();
  if (max_norm > 0) {
    at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (const auto& p : params) {
      if (p.grad().defined()) p.grad().mul_(coef.to(p.grad().scalar_type()));
    }
  }
  return total;
}

}  // namespace recast::train
