#include "recast/train/comm.h"

#include "recast/core/error.h"

#include <cstdlib>

namespace recast::train {

DistEnv dist_env() {
  auto int_var = [](const char* name, int fallback, int lo) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > 1'000'000) {
      throw UsageError(msg("environment ", name, "=", quote(v), ": expected an integer >= ", lo));
    }
    return static_cast<int>(x);
  };
  DistEnv e;
  e.world_size = int_var("WORLD_SIZE", 1, 1);
  e.rank = int_var("RANK", 0, 0);
  e.local_rank = int_var("LOCAL_RANK", 0, 0);
  if (e.rank >= e.world_size) {
    throw UsageError(msg("environment RANK=", e.rank, " is not below WORLD_SIZE=", e.world_size));
  }
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  if (const char* p = std::getenv("MASTER_PORT")) e.master_port = p;
  return e;
}

std::shared_ptr<Communicator> make_communicator(const DistEnv& env) {
  if (env.world_size > 1) {
    throw UsageError(msg("WORLD_SIZE=", env.world_size, " (rank ", env.rank, ", master ",
                         env.master_addr, ":", env.master_port,
                         "): data-parallel training is not implemented yet; run one process"));
  }
  return std::make_shared<SingleProcess>();
}

}  // namespace recast::train
