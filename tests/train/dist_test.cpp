// Data parallelism on the CPU (Gloo over 127.0.0.1): the bucketed gradient
// reducer against a plain all-reduce and sharded evaluation against one
// process (ranks as threads of this process); then `recast launch` with 2 and
// 3 ranks as processes: N ranks x B train what one process trains with N * B
// (with and without gradient accumulation, with a sharded optimizer), a kill
// -9 of the whole job resumes bit for bit, a killed rank ends the job within
// the timeout, SIGTERM to the launcher checkpoints and exits 0; finetune and
// convert's attention transfer run under it as well.

#include "models/tiny.h"
#include "process_util.h"
#include "train/train_cli_util.h"
#include "recast/io/safetensors.h"
#include "recast/train/comm.h"
#include "recast/train/objectives.h"
#include "recast/train/reducer.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

namespace recast::testing {
namespace {

namespace fs = std::filesystem;
using train::Communicator;

// A port nobody listens on now (the kernel's pick).
int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

// `world` ranks as threads, each with its own Gloo communicator.
void with_ranks(int world, const std::function<void(Communicator&)>& body) {
  const int port = free_port();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        train::DistEnv env;
        env.rank = r, env.world_size = world, env.local_rank = r, env.local_world_size = world;
        env.master_port = port;
        auto comm = train::make_communicator(env, c10::kCPU, std::chrono::seconds(60));
        body(*comm);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

// The ranks are threads: the global generator is drawn under one lock, so
// that every net built from the same seed is the same.
std::mutex& rng_lock() {
  static std::mutex m;
  return m;
}

torch::nn::Sequential small_net() {
  std::lock_guard<std::mutex> lock(rng_lock());
  torch::manual_seed(3);
  return torch::nn::Sequential(torch::nn::Linear(5, 7), torch::nn::Tanh(), torch::nn::Linear(7, 3),
                               torch::nn::Tanh(), torch::nn::Linear(3, 2));
}

TEST(DistReducer, BucketedAllReduceEqualsAPlainAllReduce) {
  // Buckets of 64 bytes: several buckets, launched inside backward.
  for (int world : {2, 3}) {
    with_ranks(world, [&](Communicator& comm) {
      auto shared = std::shared_ptr<Communicator>(&comm, [](Communicator*) {});
      auto a = small_net(), b = small_net();
      at::Tensor x;
      {
        std::lock_guard<std::mutex> lock(rng_lock());  // not between another rank's seed and its init
        x = at::randn({4, 5}, at::TensorOptions().dtype(at::kDouble)).add(comm.rank());
      }
      a->to(at::kDouble), b->to(at::kDouble);
      train::GradReducer reducer(a->parameters(), shared, /*bucket_bytes=*/64);
      EXPECT_GT(reducer.buckets(), 2);
      for (int accum : {1, 2}) {
        for (int micro = 0; micro < accum; ++micro) {
          reducer.prepare(/*sync=*/micro == accum - 1);
          a->forward(x * (micro + 1)).pow(2).sum().backward();
          b->forward(x * (micro + 1)).pow(2).sum().backward();
        }
        reducer.finish();
        EXPECT_GT(reducer.launched_in_backward(), 0);
        std::vector<at::Tensor> plain;
        for (auto& p : b->parameters()) plain.push_back(p.grad().clone());
        comm.all_reduce_sum(plain);
        auto pa = a->parameters();
        for (size_t i = 0; i < pa.size(); ++i) {
          EXPECT_TRUE(at::allclose(pa[i].grad(), plain[i] / world, 1e-14, 1e-14))
              << "rank " << comm.rank() << " of " << world << ", accumulation " << accum << ", parameter "
              << i << ": max difference " << (pa[i].grad() - plain[i] / world).abs().max().item<double>();
        }
        reducer.release();
        for (auto& p : b->parameters()) p.mutable_grad() = at::Tensor();
      }
    });
  }
}

TEST(DistReducer, AParameterNoRankUsedGetsNoGradient) {
  with_ranks(2, [&](Communicator& comm) {
    auto shared = std::shared_ptr<Communicator>(&comm, [](Communicator*) {});
    torch::nn::Linear used(3, 2), unused(3, 2), sometimes(3, 2);
    std::vector<at::Tensor> params = used->parameters();
    for (auto& p : unused->parameters()) params.push_back(p);
    for (auto& p : sometimes->parameters()) params.push_back(p);
    train::GradReducer reducer(params, shared);
    reducer.prepare(true);
    at::Tensor loss = used->forward(at::ones({1, 3})).sum();
    if (comm.rank() == 1) loss = loss + sometimes->forward(at::ones({1, 3})).sum();
    loss.backward();
    reducer.finish();
    EXPECT_TRUE(used->weight.grad().defined());
    EXPECT_FALSE(unused->weight.grad().defined());
    ASSERT_TRUE(sometimes->weight.grad().defined());  // rank 1's, averaged
    EXPECT_TRUE(at::allclose(sometimes->weight.grad(), at::full({2, 3}, 0.5)));
  });
}

// A data set of 37 sequences: batches of 4 split unevenly over the ranks.
class Toy : public train::Dataset {
 public:
  train::DataKind kind() const override { return train::DataKind::Text; }
  int64_t size() const override { return 37; }
  train::Example batch(const std::vector<int64_t>& idx) const override {
    train::Example ex;
    at::Tensor ids = at::empty({static_cast<int64_t>(idx.size()), 9}, at::kLong);
    for (size_t i = 0; i < idx.size(); ++i) {
      for (int64_t t = 0; t < 9; ++t) ids[static_cast<int64_t>(i)][t] = (idx[i] * 7 + t * 3) % 16;
    }
    ex.inputs.input_ids = ids.narrow(1, 0, 8);
    ex.labels = ids.narrow(1, 1, 8);
    ex.tokens = ex.labels.numel();
    ex.bytes = ex.tokens;
    return ex;
  }
  std::string describe() const override { return "toy"; }
};

TEST(DistEval, ShardedEvaluationEqualsOneProcess) {
  auto model = tiny_model("gpt2");
  Toy data;
  train::EvalOptions o;
  o.batch_size = 4;
  const train::EvalResult alone = train::evaluate(*model, data, o);
  for (int world : {2, 3}) {
    with_ranks(world, [&](Communicator& comm) {
      models::ModelPtr m;
      {
        std::lock_guard<std::mutex> lock(rng_lock());
        m = tiny_model("gpt2");  // the same seed's weights
      }
      train::EvalOptions so = o;
      so.comm = std::shared_ptr<Communicator>(&comm, [](Communicator*) {});
      const train::EvalResult r = train::evaluate(*m, data, so);
      EXPECT_EQ(r.count, alone.count);
      EXPECT_NEAR(r.loss, alone.loss, 1e-6 * alone.loss);  // fp32 means of other row subsets
      EXPECT_NEAR(r.bits_per_byte, alone.bits_per_byte, 1e-6 * alone.bits_per_byte);
    });
  }
}

// ---- processes

std::vector<std::string> pretrain(const std::string& data, const std::string& out, int batch,
                                  int steps = 20) {
  return {"pretrain", "--arch", "gpt2", "--set", "n_layer=2", "--set", "n_embd=32", "--set",
          "n_head=2", "--data", data, "--seq-len", "16", "--batch-size", std::to_string(batch), "--steps",
          std::to_string(steps), "--lr", "3e-3", "--save-every", "3", "--log-every", "1",
          "--eval-batches", "3", "--threads", "1", "--no-progress", "--dist-timeout", "30",
          "--out", out};
}

std::vector<std::string> launch(int nproc, const std::vector<std::string>& verb) {
  std::vector<std::string> a = {"launch", "--nproc-per-node", std::to_string(nproc), "--master-port",
                                std::to_string(free_port()), "--grace", "1"};
  a.insert(a.end(), verb.begin(), verb.end());
  return a;
}

std::map<std::string, at::Tensor> weights(const std::string& out) {
  std::map<std::string, at::Tensor> m;
  for (auto& [name, t] : io::TensorStore::open(out + "/model.safetensors").load_all(true)) m[name] = t;
  return m;
}

// ||a - b|| / ||b|| over all the weights together. (Per tensor, the largest
// relative difference is in the attention's key bias, whose gradient is 0
// in exact arithmetic: Adam normalises float noise there, and two
// single-process runs on 1 and 2 threads differ by ~1e-4 in it too.)
double relative_difference(const std::string& a, const std::string& b) {
  auto wa = weights(a), wb = weights(b);
  EXPECT_EQ(wa.size(), wb.size());
  double diff = 0, norm = 0;
  for (auto& [name, t] : wb) {
    if (!wa.count(name)) {
      ADD_FAILURE() << name;
      continue;
    }
    diff += (wa[name].to(at::kDouble) - t.to(at::kDouble)).pow(2).sum().item<double>();
    norm += t.to(at::kDouble).pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}

std::vector<double> train_losses(const std::string& out) {
  std::ifstream in(out + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["split"] == "train") losses.push_back(j["loss"].get<double>());
  }
  return losses;
}

void expect_same_curves(const std::string& a, const std::string& b, double tol) {
  const auto la = train_losses(a), lb = train_losses(b);
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], tol * lb[i]) << "step " << i + 1;
}

// The processes `pid` started (Linux: /proc/PID/task/PID/children).
std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t p; in >> p;) out.push_back(p);
  return out;
}

// Waits (at most 30 s) until none of `pids` exists.
void wait_gone(const std::vector<pid_t>& pids) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (pid_t p : pids) {
    while (::kill(p, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

// The environment variable `key` of process `pid` ("" when absent).
std::string env_of(pid_t pid, const std::string& key) {
  const std::string all = read_bytes("/proc/" + std::to_string(pid) + "/environ");
  std::istringstream in(all);
  for (std::string kv; std::getline(in, kv, '\0');) {
    if (kv.rfind(key + "=", 0) == 0) return kv.substr(key.size() + 1);
  }
  return "";
}

class DistCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    fs::create_directories(dir_->file("corpus"));
    write_corpus(dir_->file("corpus"), 24, 900, 777);
    // One process, batch 4: what two ranks of batch 2 must reproduce.
    Result one = run(pretrain(corpus(), dir_->file("one"), 4));
    ASSERT_EQ(one.code, 0) << one.err;
    // Two ranks of batch 2: the uninterrupted run the kill / SIGTERM tests resume to.
    two_ = new Result(run(launch(2, pretrain(corpus(), dir_->file("two"), 2))));
  }
  static void TearDownTestSuite() {
    delete two_;
    delete dir_;
  }
  static std::string corpus() { return dir_->file("corpus"); }
  static std::string path(const std::string& name) { return dir_->file(name); }
  static void expect_two_ranks_final(const std::string& out) {
    EXPECT_TRUE(read_bytes(out + "/model.safetensors") == read_bytes(path("two/model.safetensors")))
        << out << ": final weights differ from the uninterrupted two-rank run";
  }
  static TempDir* dir_;
  static Result* two_;
};
TempDir* DistCli::dir_ = nullptr;
Result* DistCli::two_ = nullptr;

TEST_F(DistCli, TwoRanksOfBTrainWhatOneProcessTrainsWithTwiceB) {
  ASSERT_EQ(two_->code, 0) << two_->err;
  EXPECT_LT(relative_difference(path("two"), path("one")), 1e-5);
  expect_same_curves(path("two"), path("one"), 1e-5);
  // Rank 0 wrote the outputs; the checkpoint says how many ranks made it.
  const auto state = nlohmann::json::parse(read_bytes(path("two/checkpoints/step-00000020/trainer_state.json")));
  EXPECT_EQ(state["world_size"], 2);
  EXPECT_EQ(state["options"]["batch_size"], 4);  // the global batch
  // Every line the ranks printed is prefixed with the rank.
  std::istringstream err(two_->err);
  for (std::string line; std::getline(err, line);) {
    if (line.rfind("launch:", 0) == 0 || line.rfind("recast: ", 0) == 0) continue;
    EXPECT_TRUE(line.rfind("[rank 0] ", 0) == 0 || line.rfind("[rank 1] ", 0) == 0) << line;
  }
}

TEST_F(DistCli, ThreeRanksWithAccumulationTrainWhatOneProcessTrains) {
  auto alone = pretrain(corpus(), path("accum-one"), 3);
  alone.insert(alone.end(), {"--grad-accum", "2"});
  ASSERT_EQ(run(alone).code, 0);
  auto ranks = pretrain(corpus(), path("accum-three"), 1);
  ranks.insert(ranks.end(), {"--grad-accum", "2"});
  Result r = run(launch(3, ranks));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LT(relative_difference(path("accum-three"), path("accum-one")), 1e-5);
  expect_same_curves(path("accum-three"), path("accum-one"), 1e-5);
  // The final evaluation, sharded over the three ranks, is the one process's.
  auto last_eval = [](const std::string& out) {
    std::ifstream in(out + "/metrics.jsonl");
    double loss = 0;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      if (j["split"] == "eval") loss = j["loss"].get<double>();
    }
    return loss;
  };
  EXPECT_NEAR(last_eval(path("accum-three")), last_eval(path("accum-one")), 1e-5);
}

TEST_F(DistCli, ShardedOptimizerTrainsExactlyAsUnsharded) {
  auto args = pretrain(corpus(), path("sharded"), 2);
  args.push_back("--shard-optimizer");
  Result r = run(launch(2, args));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_two_ranks_final(path("sharded"));
  // The checkpoint holds the whole optimizer state, as the unsharded run's.
  EXPECT_TRUE(read_bytes(path("sharded/checkpoints/step-00000020/optimizer.safetensors")) ==
              read_bytes(path("two/checkpoints/step-00000020/optimizer.safetensors")));
}

TEST_F(DistCli, KillOfTheWholeJobThenResumeIsBitIdentical) {
  TempDir t;
  const std::string out = t.file("run");
  Child job(launch(2, pretrain(corpus(), out, 2)), t.file("log"));
  ASSERT_TRUE(wait_for_step(out, 7)) << read_bytes(t.file("log"));
  const std::vector<pid_t> ranks = children_of(job.pid());
  EXPECT_EQ(ranks.size(), 2u);
  job.signal(SIGKILL);  // the ranks die with the launcher
  EXPECT_EQ(job.wait(), 128 + SIGKILL);
  wait_gone(ranks);
  auto args = pretrain(corpus(), out, 2);
  args.push_back("--resume");
  Result r = run(launch(2, args));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_two_ranks_final(out);
  // Resuming on one rank with the same global batch is allowed, and said not to be bit-exact.
  auto one = pretrain(corpus(), out, 4);
  set_arg(one, "--steps", "23");
  one.push_back("--resume");
  Result again = run(one);
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_NE(again.err.find("not bit-exact"), std::string::npos) << again.err;
}

TEST_F(DistCli, AKilledRankEndsTheOthersWithinTheTimeout) {
  TempDir t;
  const std::string out = t.file("run");
  const std::string port = std::to_string(free_port());
  auto args = pretrain(corpus(), out, 2, 400);
  set_arg(args, "--dist-timeout", "20");
  const std::vector<std::string> common = {"WORLD_SIZE=2", "LOCAL_WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1",
                                           "MASTER_PORT=" + port};
  auto env = [&](int r) {
    auto e = common;
    e.push_back("RANK=" + std::to_string(r));
    e.push_back("LOCAL_RANK=" + std::to_string(r));
    return e;
  };
  Child r0(args, t.file("log0"), env(0));
  Child r1(args, t.file("log1"), env(1));
  ASSERT_TRUE(wait_for_step(out, 3)) << read_bytes(t.file("log0"));
  const auto killed = std::chrono::steady_clock::now();
  r1.signal(SIGKILL);
  EXPECT_EQ(r1.wait(), 128 + SIGKILL);
  const int code = r0.wait();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_EQ(code, 1) << read_bytes(t.file("log0"));
  EXPECT_LT(took, 60.0);
  const std::string log = read_bytes(t.file("log0"));
  EXPECT_NE(log.find("recast: error: rank 0 of 2: gloo"), std::string::npos) << log;

  // Under the launcher: the job's exit code is the killed rank's, the other rank is ended.
  TempDir t2;
  Child job(launch(2, pretrain(corpus(), t2.file("run"), 2, 400)), t2.file("log"));
  ASSERT_TRUE(wait_for_step(t2.file("run"), 3)) << read_bytes(t2.file("log"));
  pid_t rank1 = -1;
  const std::vector<pid_t> children = children_of(job.pid());
  ASSERT_EQ(children.size(), 2u);
  for (pid_t p : children) {
    if (env_of(p, "RANK") == "1") rank1 = p;
  }
  ASSERT_GT(rank1, 0);
  ::kill(rank1, SIGKILL);
  EXPECT_EQ(job.wait(), 128 + SIGKILL) << read_bytes(t2.file("log"));
  EXPECT_NE(read_bytes(t2.file("log")).find("launch: rank 1 exited with 137"), std::string::npos)
      << read_bytes(t2.file("log"));
}

TEST_F(DistCli, SigtermToTheLauncherCheckpointsAndExitsZeroThenResumes) {
  TempDir t;
  const std::string out = t.file("run");
  Child job(launch(2, pretrain(corpus(), out, 2)), t.file("log"));
  ASSERT_TRUE(wait_for_step(out, 5)) << read_bytes(t.file("log"));
  job.signal(SIGTERM);
  ASSERT_EQ(job.wait(), 0) << read_bytes(t.file("log"));
  const int64_t stopped = logged_step(out);
  EXPECT_LT(stopped, 20);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-" + [&] {
    char b[16];
    std::snprintf(b, sizeof b, "%08lld", static_cast<long long>(stopped));
    return std::string(b);
  }() + "/trainer_state.json"));
  auto args = pretrain(corpus(), out, 2);
  args.push_back("--resume");
  Result r = run(launch(2, args));
  ASSERT_EQ(r.code, 0) << r.err;
  expect_two_ranks_final(out);
}

// finetune and convert's attention transfer take the process group too; rank
// 0 alone writes --out, and the result is the one process's with the global batch.
TEST_F(DistCli, FinetuneAndAttentionTransferUnderTheLauncher) {
  const auto finetune = [&](const std::string& out, int batch) {
    return std::vector<std::string>{"finetune", "--model", path("one"), "--data", corpus(), "--seq-len", "16",
                                    "--batch-size", std::to_string(batch), "--steps", "8", "--threads", "1",
                                    "--no-progress", "--out", out};
  };
  ASSERT_EQ(run(finetune(path("ft-one"), 4)).code, 0);
  Result ft = run(launch(2, finetune(path("ft-two"), 2)));
  ASSERT_EQ(ft.code, 0) << ft.err;
  EXPECT_LT(relative_difference(path("ft-two"), path("ft-one")), 1e-5);

  const auto convert = [&](const std::string& out, int batch) {
    return std::vector<std::string>{"convert", "--recipe", "t2r", "--model", path("one"), "--out", out,
                                    "--feature-dim", "8", "--data", corpus(), "--seq-len", "16", "--batch-size",
                                    std::to_string(batch), "--transfer-steps", "6", "--threads", "1"};
  };
  ASSERT_EQ(run(convert(path("t2r-one"), 4)).code, 0);
  Result cv = run(launch(2, convert(path("t2r-two"), 2)));
  ASSERT_EQ(cv.code, 0) << cv.err;
  EXPECT_LT(relative_difference(path("t2r-two"), path("t2r-one")), 1e-5);
  // Only rank 0's output: no other rank's temporary left beside --out.
  for (const auto& e : fs::directory_iterator(dir_->path())) {
    EXPECT_EQ(e.path().filename().string().find(".t2r-two.tmp-"), std::string::npos) << e.path();
  }
}

TEST_F(DistCli, LaunchMisuseIsAUsageError) {
  expect_one_line_error(run({"launch", "--nproc-per-node", "2"}), 2, "expected a verb");
  expect_one_line_error(run({"launch", "--nproc-per-node", "2", "eval", "--model", "x"}), 2,
                        "does not train");
  expect_one_line_error(run({"launch", "--nproc-per-node", "0", "pretrain"}), 2, "--nproc-per-node");
  Result bad = run({"pretrain", "--arch", "gpt2", "--data", corpus(), "--out", path("never")},
                   {"WORLD_SIZE=2", "RANK=5"});
  EXPECT_FALSE(fs::exists(path("never")));
  expect_one_line_error(bad, 2, "RANK=5 is not below WORLD_SIZE=2");
}

}  // namespace
}  // namespace recast::testing
