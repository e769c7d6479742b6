#pragma once

// How the ranks of a data-parallel run talk: the trainer reduces gradients,
// shards the optimizer and agrees on state through this interface only.
// Two implementations: the single process (every operation the identity), and
// a c10d process group (train/comm_c10d.cpp: Gloo on the CPU, NCCL on CUDA)
// rendezvousing through a TCPStore, as torchrun describes it in the
// environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
//
// Every collective is called by every rank in the same order. A collective
// that fails (a rank died, or the timeout passed) throws recast::Error naming
// this rank, the operation and the cause, so a dead peer ends every survivor
// with a clear message instead of a hang.

#include <ATen/ATen.h>
#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace recast::train {

// A collective under way; wait() completes it (throws as the collective would).
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "single", "gloo" or "nccl".
  virtual std::string backend() const = 0;
  // Sums each tensor over the ranks, in place. Tensors may be on the CPU or
  // on the run's device whatever the backend (NCCL stages CPU tensors).
  virtual void all_reduce_sum(std::vector<at::Tensor>& tensors) = 0;
  // Starts summing `t` (contiguous, on the run's device) over the ranks in
  // place; `t` must not be touched until wait() returns.
  virtual std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor t) = 0;
  // Copies rank `root`'s tensors to every rank, in place.
  virtual void broadcast(std::vector<at::Tensor>& tensors, int root) = 0;
  virtual void barrier() = 0;
};

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce_sum(std::vector<at::Tensor>&) override {}
  std::unique_ptr<PendingCollective> all_reduce_sum_async(at::Tensor t) override;
  void broadcast(std::vector<at::Tensor>&, int) override {}
  void barrier() override {}
};

// The process group torchrun (or `recast launch`) describes: RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RUN_ID (absent: a single process). Malformed values are
// usage errors naming the variable.
struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string run_id;
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: torchrun's attempt
  // torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE=True).
  bool agent_store = false;
  // Started by torchrun or recast launch (TORCHELASTIC_RUN_ID is set): a
  // process group even for a world of one (NCCL on one GPU through the
  // launcher). A WORLD_SIZE=1 that a scheduler exports alone does not.
  bool launched = false;
};
DistEnv dist_env();

// The communicator for this process: SingleProcess for one process that no
// launcher started, else a process group on `device` (NCCL for CUDA where built with it, Gloo
// otherwise) whose rendezvous and collectives give up after `timeout`.
std::shared_ptr<Communicator> make_communicator(const DistEnv& env, c10::Device device,
                                                std::chrono::milliseconds timeout);

// The c10d process group (train/comm_c10d.cpp); a usage error where this
// build has no backend for `device`.
std::shared_ptr<Communicator> make_process_group(const DistEnv& env, c10::Device device,
                                                 std::chrono::milliseconds timeout);

// Which backends this build has ("gloo", "nccl").
std::vector<std::string> process_group_backends();

}  // namespace recast::train
