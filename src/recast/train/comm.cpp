#include "recast/train/comm.h"

#include "recast/core/error.h"

#include <cstdlib>

namespace recast::train {

namespace {

class Done : public PendingCollective {
 public:
  void wait() override {}
};

}  // namespace

std::unique_ptr<PendingCollective> SingleProcess::all_reduce_sum_async(at::Tensor) {
  return std::make_unique<Done>();
}

DistEnv dist_env() {
  auto int_var = [](const char* name, int fallback, int lo, int hi) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi) {
      throw UsageError(msg("environment ", name, "=", quote(v), ": expected an integer in [", lo, ", ",
                           hi, "]"));
    }
    return static_cast<int>(x);
  };
  DistEnv e;
  e.world_size = int_var("WORLD_SIZE", 1, 1, 1'000'000);
  e.rank = int_var("RANK", 0, 0, 1'000'000);
  e.local_rank = int_var("LOCAL_RANK", 0, 0, 1'000'000);
  e.local_world_size = int_var("LOCAL_WORLD_SIZE", e.world_size, 1, 1'000'000);
  e.master_port = int_var("MASTER_PORT", 29500, 1, 65535);
  if (e.rank >= e.world_size) {
    throw UsageError(msg("environment RANK=", e.rank, " is not below WORLD_SIZE=", e.world_size));
  }
  if (e.local_rank >= e.local_world_size) {
    throw UsageError(msg("environment LOCAL_RANK=", e.local_rank, " is not below LOCAL_WORLD_SIZE=",
                         e.local_world_size));
  }
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  if (const char* id = std::getenv("TORCHELASTIC_RUN_ID"); id && *id) e.run_id = id, e.launched = true;
  e.restart_count = int_var("TORCHELASTIC_RESTART_COUNT", 0, 0, 1'000'000);
  if (const char* s = std::getenv("TORCHELASTIC_USE_AGENT_STORE")) {
    e.agent_store = std::string(s) == "True" || std::string(s) == "1";
  }
  return e;
}

std::shared_ptr<Communicator> make_communicator(const DistEnv& env, c10::Device device,
                                                std::chrono::milliseconds timeout) {
  if (env.world_size == 1 && !env.launched) return std::make_shared<SingleProcess>();
  return make_process_group(env, device, timeout);
}

}  // namespace recast::train
