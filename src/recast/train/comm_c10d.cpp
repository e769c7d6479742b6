// The c10d process group behind train::Communicator: a TCPStore rendezvous
// (rank 0 hosts it, or torchrun's agent does) and ProcessGroupGloo (CPU) or
// ProcessGroupNCCL (CUDA), both from LibTorch. Tensors of one dtype are
// flattened into one buffer per collective (Gloo takes one tensor per call,
// and one large message beats many small ones); NCCL gets CPU tensors staged
// through the device.

#include "recast/train/comm.h"

#include "recast/core/error.h"
#include "recast/core/log.h"

#ifdef RECAST_WITH_GLOO
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef RECAST_WITH_NCCL
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <torch/torch.h>

#include <map>
#include <utility>

namespace recast::train {

#if defined(RECAST_WITH_GLOO) || defined(RECAST_WITH_NCCL)
namespace {

// LibTorch's errors carry a backtrace after the first line.
std::string first_line(const std::exception& e) {
  std::string s = e.what();
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

template <typename Group>
class ProcessGroupComm : public Communicator {
 public:
  ProcessGroupComm(c10::intrusive_ptr<Group> group, const DistEnv& env, std::string backend,
                   c10::Device device, std::chrono::milliseconds timeout)
      : group_(std::move(group)), env_(env), backend_(std::move(backend)), device_(device),
        timeout_(timeout) {}

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }
  std::string backend() const override { return backend_; }

  void all_reduce_sum(std::vector<at::Tensor>& tensors) override {
    coalesced(tensors, "all-reduce", [&](at::Tensor& flat) {
      std::vector<at::Tensor> one = {flat};
      wait(group_->allreduce(one), "all-reduce");
    });
  }

  std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor t) override {
    std::vector<at::Tensor> one = {std::move(t)};
    try {
      return std::make_unique<Pending>(this, group_->allreduce(one));
    } catch (const std::exception& e) {
      fail("all-reduce", e);
    }
  }

  void broadcast(std::vector<at::Tensor>& tensors, int root) override {
    coalesced(tensors, "broadcast", [&](at::Tensor& flat) {
      std::vector<at::Tensor> one = {flat};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      wait(group_->broadcast(one, o), "broadcast");
    });
  }

  void barrier() override {
    // A one-element all-reduce: the same on every backend, and it honours the timeout.
    std::vector<at::Tensor> t = {at::zeros({1}, at::TensorOptions().device(device_))};
    all_reduce_sum(t);
  }

  [[noreturn]] void fail(const char* op, const std::exception& e) const {
    throw Error(msg("rank ", env_.rank, " of ", env_.world_size, ": ", backend_, " ", op,
                    " failed (", first_line(e), "); a rank probably died or stopped answering "
                    "within the --dist-timeout of ", timeout_.count() / 1000, " s"));
  }

 private:
  class Pending : public PendingCollective {
   public:
    Pending(ProcessGroupComm* comm, c10::intrusive_ptr<c10d::Work> work)
        : comm_(comm), work_(std::move(work)) {}
    void wait() override { comm_->wait(work_, "all-reduce"); }

   private:
    ProcessGroupComm* comm_;
    c10::intrusive_ptr<c10d::Work> work_;
  };

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* op) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      fail(op, e);
    }
  }

  // One flat buffer per dtype, on the collective's device; results copied back.
  template <typename Op>
  void coalesced(std::vector<at::Tensor>& tensors, const char* op, Op run) {
    torch::NoGradGuard no_grad;
    std::map<c10::ScalarType, std::vector<size_t>> by_dtype;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (tensors[i].defined() && tensors[i].numel() > 0) by_dtype[tensors[i].scalar_type()].push_back(i);
    }
    for (const auto& [dtype, idx] : by_dtype) {
      std::vector<at::Tensor> parts;
      for (size_t i : idx) parts.push_back(tensors[i].reshape(-1).to(device_));
      at::Tensor flat = parts.size() == 1 ? parts[0].clone() : at::cat(parts);
      try {
        run(flat);
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        fail(op, e);
      }
      int64_t offset = 0;
      for (size_t i : idx) {
        const int64_t n = tensors[i].numel();
        tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
        offset += n;
      }
    }
  }

  c10::intrusive_ptr<Group> group_;
  DistEnv env_;
  std::string backend_;
  c10::Device device_;
  std::chrono::milliseconds timeout_;
};

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

c10::intrusive_ptr<c10d::Store> rendezvous(const DistEnv& env, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(env.master_port);
  o.isServer = env.rank == 0 && !env.agent_store;
  o.numWorkers = env.agent_store ? c10::nullopt : c10::optional<std::size_t>(env.world_size);
  o.waitWorkers = !env.agent_store;
  o.timeout = timeout;
  try {
    auto store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
    // torchrun's agent store holds its own keys and outlives a restart: ours
    // live under the run's and the attempt's prefix.
    return c10::make_intrusive<c10d::PrefixStore>(msg("recast/", env.run_id, "/attempt_", env.restart_count, "/"),
                                                  c10::intrusive_ptr<c10d::Store>(store));
  } catch (const std::exception& e) {
    throw Error(msg("rank ", env.rank, " of ", env.world_size, ": rendezvous at ", env.master_addr,
                    ":", env.master_port, " failed (", first_line(e), "); check MASTER_ADDR / "
                    "MASTER_PORT, that every rank started, and --dist-timeout"));
  }
}

}  // namespace
#endif

std::vector<std::string> process_group_backends() {
  std::vector<std::string> out;
#ifdef RECAST_WITH_GLOO
  out.push_back("gloo");
#endif
#ifdef RECAST_WITH_NCCL
  out.push_back("nccl");
#endif
  return out;
}

std::shared_ptr<Communicator> make_process_group(const DistEnv& env, c10::Device device,
                                                 std::chrono::milliseconds timeout) {
#if defined(RECAST_WITH_GLOO) || defined(RECAST_WITH_NCCL)
  auto store = rendezvous(env, timeout);
#ifdef RECAST_WITH_NCCL
  if (device.is_cuda()) {
    c10::cuda::set_device(device.index());
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    try {
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, options);
      log::info("rank ", env.rank, " of ", env.world_size, ": NCCL process group on ", device.str());
      return std::make_shared<ProcessGroupComm<c10d::ProcessGroupNCCL>>(group, env, "nccl", device,
                                                                        timeout);
    } catch (const std::exception& e) {
      throw Error(msg("rank ", env.rank, ": NCCL process group: ", first_line(e)));
    }
  }
#endif
#ifdef RECAST_WITH_GLOO
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  try {
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(env.master_addr)) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
    log::debug("rank ", env.rank, " of ", env.world_size, ": Gloo process group, tensors on ",
               device.str());
    return std::make_shared<ProcessGroupComm<c10d::ProcessGroupGloo>>(group, env, "gloo", device,
                                                                      timeout);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(msg("rank ", env.rank, " of ", env.world_size, ": Gloo process group: ", first_line(e)));
  }
#endif
#endif
  (void)timeout;
  throw UsageError(msg("WORLD_SIZE=", env.world_size, ": this build of recast has no process-group "
                       "backend for ", device.str(), " (built with: ",
                       process_group_backends().empty() ? std::string("none") : "gloo/nccl",
                       "); install libgloo-dev and rebuild"));
}

}  // namespace recast::train
