#include "recast/train/objectives.h"

#include "recast/core/error.h"
#include "recast/train/autocast.h"

#include <torch/torch.h>

#include <cmath>

namespace recast::train {

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  RECAST_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                   logits.size(1) == labels.size(1),
               "causal LM loss: expected logits [B, T, V] and labels [B, T], found ",
               shape_string(logits.sizes()), " and ", shape_string(labels.sizes()));
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(2)}).to(at::kFloat),
                                labels.reshape({-1}));
}

at::Tensor classification_loss(const at::Tensor& logits, const at::Tensor& labels) {
  RECAST_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
               "classification loss: expected logits [B, C] and labels [B], found ",
               shape_string(logits.sizes()), " and ", shape_string(labels.sizes()));
  const int64_t top = labels.max().item<int64_t>(), bottom = labels.min().item<int64_t>();
  if (bottom < 0 || top >= logits.size(1)) {
    throw Error(msg("label ", bottom < 0 ? bottom : top, " out of range for a model with ",
                    logits.size(1), " classes"));
  }
  return at::cross_entropy_loss(logits.to(at::kFloat), labels);
}

at::Tensor distillation_kl(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                           double temperature) {
  RECAST_CHECK(student_logits.sizes() == teacher_logits.sizes(),
               "distillation: student logits ", shape_string(student_logits.sizes()),
               " and teacher logits ", shape_string(teacher_logits.sizes()), " differ");
  RECAST_CHECK(temperature > 0, "distillation temperature: expected > 0, found ", temperature);
  const int64_t classes = student_logits.size(-1);
  at::Tensor s = at::log_softmax(student_logits.to(at::kFloat).reshape({-1, classes}) / temperature, 1);
  at::Tensor t = at::log_softmax(teacher_logits.to(at::kFloat).reshape({-1, classes}) / temperature, 1);
  // KL(p_t || p_s) = sum p_t (log p_t - log p_s), averaged over positions.
  at::Tensor kl = (t.exp() * (t - s)).sum(1).mean();
  return kl * (temperature * temperature);
}

at::Tensor TaskObjective::operator()(const at::Tensor& logits, const Example& ex) const {
  // Encoder-decoders: the decoder's logits against the targets, position by position.
  const bool tokens = task_ == models::Task::CausalLM || task_ == models::Task::Seq2SeqLM;
  at::Tensor task_loss =
      tokens ? causal_lm_loss(logits, ex.labels) : classification_loss(logits, ex.labels);
  if (!teacher_) return task_loss;
  at::Tensor teacher_logits;
  {
    torch::NoGradGuard no_grad;
    teacher_logits = teacher_->forward(ex.inputs);
  }
  if (task_ == models::Task::Seq2SeqLM && ex.labels.defined()) {
    // Only the real target positions (padded text-to-text targets are -100).
    const at::Tensor keep = ex.labels.reshape({-1}).ne(-100).nonzero().squeeze(1);
    const int64_t v = logits.size(-1);
    RECAST_CHECK(teacher_logits.size(-1) == v, "distillation: the teacher has ", teacher_logits.size(-1),
                 " logits per token, the student ", v);
    return alpha_ * distillation_kl(logits.reshape({-1, v}).index_select(0, keep),
                                    teacher_logits.reshape({-1, v}).index_select(0, keep), temperature_) +
           (1.0 - alpha_) * task_loss;
  }
  return alpha_ * distillation_kl(logits, teacher_logits, temperature_) + (1.0 - alpha_) * task_loss;
}

at::Tensor TaskObjective::loss(models::Model& model, const Example& ex) {
  return (*this)(model.forward(ex.inputs), ex);
}

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j = {{"loss", loss}, {"count", count}};
  if (classes.empty()) {
    j["perplexity"] = perplexity;
    j["bits_per_byte"] = bits_per_byte;
  } else {
    j["accuracy"] = accuracy;
    nlohmann::json per = nlohmann::json::object();
    for (size_t c = 0; c < classes.size(); ++c) per[classes[c]] = per_class_accuracy[c];
    j["per_class_accuracy"] = per;
    j["classes"] = classes;
    j["confusion"] = confusion;
  }
  return j;
}

EvalResult evaluate(models::Model& model, const Dataset& data, const EvalOptions& o) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  Loader loader(data.size(), o.batch_size, 0, /*shuffle=*/false, /*drop_last=*/false);
  int64_t batches = loader.batches_per_epoch();
  if (o.max_batches > 0) batches = std::min(batches, o.max_batches);
  EvalResult r;
  r.classes = data.classes();
  const auto k = static_cast<int64_t>(r.classes.size());
  r.confusion.assign(static_cast<size_t>(k), std::vector<int64_t>(static_cast<size_t>(k), 0));
  double total_loss = 0, total_bytes = 0;
  at::Tensor confusion = at::zeros({std::max<int64_t>(k, 1) * std::max<int64_t>(k, 1)}, at::kLong);
  const int rank = o.comm ? o.comm->rank() : 0, world = o.comm ? o.comm->world_size() : 1;
  for (int64_t b = 0; b < batches; ++b) {
    std::vector<int64_t> rows = loader.next();
    if (world > 1) {  // this rank's share of the batch's rows
      const auto n = static_cast<int64_t>(rows.size());
      rows = std::vector<int64_t>(rows.begin() + rank * n / world, rows.begin() + (rank + 1) * n / world);
      if (rows.empty()) continue;
    }
    Example ex = data.batch(rows);
    models::Batch in = to_device(ex.inputs, o.device);
    if (o.transform) o.transform(in, b);
    const at::Tensor labels = ex.labels.to(o.device);
    at::Tensor logits;
    {
      AutocastGuard autocast(o.bf16 && o.device.is_cuda());
      logits = model.forward(in);
    }
    if (k == 0) {
      const at::Tensor loss = causal_lm_loss(logits, labels);
      total_loss += loss.item<double>() * static_cast<double>(ex.tokens);
      r.count += ex.tokens;
      total_bytes += static_cast<double>(ex.bytes);
    } else {
      RECAST_CHECK(logits.size(1) >= k, "the model has ", logits.size(1),
                   " outputs but the data has ", k, " classes");
      const at::Tensor loss = classification_loss(logits, labels);
      total_loss += loss.item<double>() * static_cast<double>(ex.tokens);
      r.count += ex.tokens;
      const at::Tensor predicted = logits.argmax(1).to(at::kCPU).clamp_max(k - 1);
      confusion.index_add_(0, ex.labels * k + predicted, at::ones_like(predicted));
    }
  }
  if (was_training) model.train();
  if (world > 1) {
    std::vector<at::Tensor> sums = {
        at::tensor({total_loss, static_cast<double>(r.count), total_bytes}, at::kDouble), confusion};
    o.comm->all_reduce_sum(sums);
    total_loss = sums[0][0].item<double>();
    r.count = static_cast<int64_t>(sums[0][1].item<double>());
    total_bytes = sums[0][2].item<double>();
  }
  RECAST_CHECK(r.count > 0, "evaluation: empty data set");
  r.loss = total_loss / static_cast<double>(r.count);
  if (k == 0) {
    r.perplexity = std::exp(r.loss);
    r.bits_per_byte =
        total_bytes > 0 ? total_loss / std::log(2.0) / total_bytes : std::nan("");
  } else {
    int64_t correct = 0;
    r.per_class_accuracy.assign(static_cast<size_t>(k), 0.0);
    auto acc = confusion.accessor<int64_t, 1>();
    for (int64_t t = 0; t < k; ++t) {
      int64_t row = 0;
      for (int64_t p = 0; p < k; ++p) {
        r.confusion[static_cast<size_t>(t)][static_cast<size_t>(p)] = acc[t * k + p];
        row += acc[t * k + p];
      }
      correct += acc[t * k + t];
      r.per_class_accuracy[static_cast<size_t>(t)] =
          row ? static_cast<double>(acc[t * k + t]) / static_cast<double>(row) : std::nan("");
    }
    r.accuracy = static_cast<double>(correct) / static_cast<double>(r.count);
  }
  return r;
}

}  // namespace recast::train
