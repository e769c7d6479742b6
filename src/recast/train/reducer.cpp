#include "recast/train/reducer.h"

#include "recast/core/error.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <mutex>
#include <set>

namespace recast::train {

struct GradReducer::State {
  struct Bucket {
    at::Tensor flat;
    std::vector<size_t> members;
    std::vector<int64_t> offsets;
    int64_t pending = 0;
    bool ready = false;
    std::unique_ptr<PendingCollective> work;
  };

  std::vector<at::Tensor> params;
  std::shared_ptr<Communicator> comm;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;
  std::vector<uint8_t> used, counted;  // got a gradient this step / in the syncing backward
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::mutex mutex;
  size_t next = 0;
  bool armed = false, sync = false, fresh = true;
  int64_t launched_in_backward = 0;

  // Launches every ready bucket from `next` on, in index order.
  void launch_ready(bool in_backward) {
    while (next < buckets.size() && buckets[next].ready) {
      Bucket& b = buckets[next++];
      b.work = comm->all_reduce_sum_async(b.flat);
      if (in_backward) ++launched_in_backward;
    }
  }

  void mark(size_t i) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed) return;
    used[i] = 1;
    if (!sync || counted[i]) return;
    counted[i] = 1;
    Bucket& b = buckets[bucket_of[i]];
    if (--b.pending == 0) b.ready = true;
    launch_ready(/*in_backward=*/true);
  }
};

namespace {

// Runs after a parameter's AccumulateGrad node: its .grad (a bucket view) is final.
class AccumulatedHook : public torch::autograd::FunctionPostHook {
 public:
  AccumulatedHook(std::weak_ptr<GradReducer::State> state, size_t index)
      : state_(std::move(state)), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (auto s = state_.lock()) s->mark(index_);
    return outputs;
  }

 private:
  std::weak_ptr<GradReducer::State> state_;
  size_t index_;
};

}  // namespace

GradReducer::GradReducer(std::vector<at::Tensor> params, std::shared_ptr<Communicator> comm,
                         int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.comm = std::move(comm);
  std::set<const void*> seen;  // a parameter registered twice is reduced once
  for (auto& p : params) {
    if (p.requires_grad() && seen.insert(p.unsafeGetTensorImpl()).second) s.params.push_back(p);
  }
  RECAST_CHECK(!s.params.empty(), "gradient reducer: no parameter requires a gradient");
  s.bucket_of.assign(s.params.size(), 0);
  s.used.assign(s.params.size(), 0);
  s.counted.assign(s.params.size(), 0);
  // Reverse registration order, cut at bucket_bytes and wherever dtype or device changes.
  std::vector<std::vector<size_t>> groups;
  int64_t bytes = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    const at::Tensor& p = s.params[k];
    const bool cut = groups.empty() || bytes >= bucket_bytes ||
                     p.scalar_type() != s.params[groups.back().front()].scalar_type() ||
                     p.device() != s.params[groups.back().front()].device();
    if (cut) groups.emplace_back(), bytes = 0;
    groups.back().push_back(k);
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  for (const auto& members : groups) {
    State::Bucket b;
    int64_t n = 0;
    for (size_t k : members) {
      b.offsets.push_back(n);
      n += s.params[k].numel();
      s.bucket_of[k] = s.buckets.size();
    }
    b.members = members;
    b.flat = at::zeros({n}, s.params[members.front()].options().requires_grad(false));
    s.buckets.push_back(std::move(b));
  }
  for (size_t k = 0; k < s.params.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(s.params[k]);
    RECAST_CHECK(acc != nullptr, "gradient reducer: parameter ", k, " has no gradient accumulator");
    acc->add_post_hook(std::make_unique<AccumulatedHook>(state_, k));
    s.accumulators.push_back(std::move(acc));
  }
}

GradReducer::~GradReducer() {
  // The hooks hold weak pointers: once the state is gone they do nothing.
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->armed = false;
}

void GradReducer::prepare(bool sync) {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.fresh) {
    torch::NoGradGuard no_grad;
    for (auto& b : s.buckets) {
      b.flat.zero_();
      b.pending = static_cast<int64_t>(b.members.size());
      b.ready = false;
      b.work.reset();
      for (size_t j = 0; j < b.members.size(); ++j) {
        at::Tensor& p = s.params[b.members[j]];
        p.mutable_grad() = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      }
    }
    std::fill(s.used.begin(), s.used.end(), 0);
    std::fill(s.counted.begin(), s.counted.end(), 0);
    s.next = 0;
    s.launched_in_backward = 0;
    s.fresh = false;
  }
  s.armed = true;
  s.sync = sync;
}

void GradReducer::finish() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.armed = false;
    for (auto& b : s.buckets) b.ready = true;
    s.launch_ready(/*in_backward=*/false);
  }
  torch::NoGradGuard no_grad;
  const double n = static_cast<double>(s.comm->world_size());
  for (auto& b : s.buckets) {
    b.work->wait();
    b.work.reset();
    b.flat.div_(n);
  }
  // Which parameters some rank used: the others get no gradient, as alone.
  std::vector<at::Tensor> used = {at::from_blob(s.used.data(), {static_cast<int64_t>(s.used.size())},
                                                at::kByte).to(at::kFloat)};
  s.comm->all_reduce_sum(used);
  const at::Tensor any = used[0].to(at::kCPU);
  const float* a = any.data_ptr<float>();
  for (size_t k = 0; k < s.params.size(); ++k) {
    if (a[k] == 0.0f) s.params[k].mutable_grad() = at::Tensor();
  }
}

void GradReducer::release() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->fresh = true;
}

int64_t GradReducer::buckets() const { return static_cast<int64_t>(state_->buckets.size()); }

int64_t GradReducer::launched_in_backward() const { return state_->launched_in_backward; }

}  // namespace recast::train
