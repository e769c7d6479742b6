#pragma once

// How the ranks of a data-parallel run talk: the trainer reduces gradients
// and agrees on state through this interface only. One implementation today,
// the single process (every operation the identity); a process-group backend
// (c10d Gloo / NCCL under torchrun) plugs in behind the same calls.

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

namespace recast::train {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums each tensor over the ranks, in place.
  virtual void all_reduce_sum(std::vector<at::Tensor>& tensors) = 0;
  // Copies rank `root`'s tensors to every rank, in place.
  virtual void broadcast(std::vector<at::Tensor>& tensors, int root) = 0;
  virtual void barrier() = 0;
};

class SingleProcess : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void all_reduce_sum(std::vector<at::Tensor>&) override {}
  void broadcast(std::vector<at::Tensor>&, int) override {}
  void barrier() override {}
};

// The process group torchrun describes: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT (absent: a single process). Malformed values are
// errors naming the variable.
struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr, master_port;
};
DistEnv dist_env();

// The communicator for this process: SingleProcess, or a usage error when
// the environment asks for more ranks (not built yet).
std::shared_ptr<Communicator> make_communicator(const DistEnv& env);

}  // namespace recast::train
