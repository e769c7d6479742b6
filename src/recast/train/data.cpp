#include "recast/train/data.h"

#include "recast/train/span_corruption.h"

#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/file.h"
#include "recast/io/image_data.h"
#include "recast/io/text_data.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <numeric>

namespace fs = std::filesystem;

namespace recast::train {
namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

const std::vector<std::string> kFashionClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                  "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                  "Bag",         "Ankle boot"};
const char* kNamed[] = {"sotu", "moby-dick", "spam-assassin", "fashion-mnist"};

bool is_named(const std::string& spec) {
  return std::find(std::begin(kNamed), std::end(kNamed), spec) != std::end(kNamed);
}

// The installed folder of a named set; an error that says how to install it.
std::string named_dir(const std::string& name) {
  fs::path dir = fs::path(data_root()) / name;
  if (name == "fashion-mnist" && !fs::exists(dir / "train-images-idx3-ubyte.gz")) {
    dir = "/usr/share/datasets/fashion-mnist";
  }
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw Error(msg("data set ", quote(name), " is not installed (looked in ",
                    (fs::path(data_root()) / name).string(), "; run scripts/fetch-data.sh ", name,
                    ")"));
  }
  return dir.string();
}

// Which of [0, n) belong to `split`: a seeded permutation cut into
// test | val | train (fractions of n), each in the permutation's order.
std::vector<int64_t> split_indices(int64_t n, uint64_t seed, double val_fraction,
                                   double test_fraction, const std::string& split) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  if (split == "all") return all;
  const auto n_test = static_cast<int64_t>(std::llround(static_cast<double>(n) * test_fraction));
  const auto n_val = static_cast<int64_t>(std::llround(static_cast<double>(n) * val_fraction));
  const std::vector<int64_t> perm = permutation(n, seed ^ 0x5EEDULL);
  std::vector<int64_t> out;
  int64_t lo = 0, hi = 0;
  if (split == "test") {
    lo = 0, hi = n_test;
  } else if (split == "val") {
    lo = n_test, hi = n_test + n_val;
  } else {
    lo = n_test + n_val, hi = n;
  }
  // In the permutation's order, not sorted: an evaluation that stops after a
  // few batches then sees a random sample, not the first class's files.
  out.assign(perm.begin() + lo, perm.begin() + std::max(lo, hi));
  return out;
}

void check_split(const std::string& split) {
  if (split != "train" && split != "val" && split != "test" && split != "all") {
    throw UsageError(msg("--split: expected train, val, test or all, found ", quote(split)));
  }
}

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

// ---------------------------------------------------------------- language modelling

}  // namespace

std::vector<io::Document> text_documents(const std::string& spec, const std::string& field) {
  std::string source = spec;
  if (spec == "sotu") source = named_dir(spec);
  if (spec == "moby-dick") source = (fs::path(named_dir(spec)) / "data.txt").string();
  return io::read_text_documents(source, field);
}

TextTokens text_split_tokens(const std::vector<io::Document>& docs, const DataOptions& o,
                             const io::Tokenizer& tok) {
  TextTokens out;
  const auto n_docs = static_cast<int64_t>(docs.size());
  // Many documents: split by document. Few: split one token stream (tail = test).
  out.by_document = n_docs >= 20 || o.split == "all";
  std::vector<int64_t> chosen;
  if (out.by_document) {
    chosen = split_indices(n_docs, o.seed, 0.05, 0.05, o.split);
  } else {
    chosen.resize(static_cast<size_t>(n_docs));
    std::iota(chosen.begin(), chosen.end(), 0);
  }
  const int64_t eos = tok.eos_id();
  for (int64_t d : chosen) {
    // The text's own ids (a T5 tokenizer's </s> is the separator below).
    const auto ids = tok.encode_plain(docs[static_cast<size_t>(d)].text);
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    if (eos >= 0) out.tokens.push_back(static_cast<int32_t>(eos));
  }
  if (!out.by_document) {
    const auto n = static_cast<int64_t>(out.tokens.size());
    const int64_t test_start = n - n / 20, val_start = test_start - n / 20;
    int64_t lo = 0, hi = val_start;
    if (o.split == "val") lo = val_start, hi = test_start;
    if (o.split == "test") lo = test_start, hi = n;
    out.tokens = std::vector<int32_t>(out.tokens.begin() + lo, out.tokens.begin() + hi);
  }
  out.documents = static_cast<int64_t>(chosen.size());
  return out;
}

namespace {

class TextLmDataset : public Dataset {
 public:
  TextLmDataset(const std::string& name, const std::vector<io::Document>& docs,
                const DataOptions& o, const io::Tokenizer& tok)
      : seq_len_(o.seq_len) {
    RECAST_CHECK(seq_len_ >= 1, "--seq-len: expected >= 1, found ", seq_len_);
    TextTokens text = text_split_tokens(docs, o, tok);
    tokens_ = std::move(text.tokens);
    const bool by_document = text.by_document;
    docs_ = text.documents;
    windows_ = tokens_.size() > 1 ? (static_cast<int64_t>(tokens_.size()) - 1) / seq_len_ : 0;
    if (windows_ == 0) {
      throw Error(msg("data ", quote(name), " (", o.split, "): empty data set (", tokens_.size(),
                      " tokens, fewer than one window of --seq-len ", seq_len_, " + 1)"));
    }
    byte_len_.resize(static_cast<size_t>(tok.vocab_size()));
    for (int64_t id = 0; id < tok.vocab_size(); ++id) {
      byte_len_[static_cast<size_t>(id)] =
          tok.is_special(id) ? 0 : static_cast<int32_t>(tok.decode({id}).size());
    }
    describe_ = msg(name, " (", o.split, "): ", with_commas(windows_), " windows of ", seq_len_,
                    " tokens (", with_commas(static_cast<int64_t>(tokens_.size())),
                    " tokens, ", docs_, by_document ? " documents" : " documents, split by position",
                    ", ", tok.kind(), " tokenizer)");
  }

  DataKind kind() const override { return DataKind::Text; }
  int64_t size() const override { return windows_; }
  std::string describe() const override { return describe_; }

  Example batch(const std::vector<int64_t>& indices) const override {
    const auto b = static_cast<int64_t>(indices.size());
    at::Tensor x = at::empty({b, seq_len_}, at::kLong), y = at::empty({b, seq_len_}, at::kLong);
    auto* px = x.data_ptr<int64_t>();
    auto* py = y.data_ptr<int64_t>();
    Example ex;
    for (int64_t r = 0; r < b; ++r) {
      const int64_t w = indices[static_cast<size_t>(r)];
      RECAST_CHECK(w >= 0 && w < windows_, "window ", w, " out of range [0, ", windows_, ")");
      const int32_t* src = tokens_.data() + w * seq_len_;
      for (int64_t t = 0; t < seq_len_; ++t) {
        px[r * seq_len_ + t] = src[t];
        py[r * seq_len_ + t] = src[t + 1];
        ex.bytes += byte_len_[static_cast<size_t>(src[t + 1])];
      }
    }
    ex.inputs.input_ids = x;
    ex.labels = y;
    ex.tokens = b * seq_len_;
    return ex;
  }

 private:
  int64_t seq_len_, windows_ = 0, docs_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> byte_len_;
  std::string describe_;
};

// ---------------------------------------------------------------- text classification

// Encoder-decoder examples (input text -> target text): classes' names as
// targets, or JSONL pairs. Padded per batch; labels -100 at the padding.
class TextToTextDataset : public Dataset {
 public:
  TextToTextDataset(const std::string& name, const io::LabeledTexts& all, const DataOptions& o,
                    const io::Tokenizer& tok)
      : start_(o.decoder_start), pad_(o.pad) {
    const auto chosen =
        split_indices(static_cast<int64_t>(all.items.size()), o.seed, 0.1, 0.1, o.split);
    if (chosen.empty()) throw Error(msg("data ", quote(name), " (", o.split, "): empty data set"));
    // T5 ends every input and target with </s> (its SentencePiece tokenizer
    // appends it; the byte tokenizer does not, so it is appended here):
    // without it a target shorter than the batch's longest never learns to
    // stop, and generation runs past it.
    auto encode = [&](const std::string& text, const std::string& source) {
      std::vector<int64_t> ids = tok.encode(text);
      if (tok.eos_id() >= 0 && (ids.empty() || ids.back() != tok.eos_id())) ids.push_back(tok.eos_id());
      if (ids.empty()) throw Error(msg(source, ": empty text"));
      if (static_cast<int64_t>(ids.size()) > o.seq_len) {  // keep the start and the </s>
        const int64_t last = ids.back();
        ids.resize(static_cast<size_t>(o.seq_len));
        if (last == tok.eos_id()) ids.back() = last;
      }
      return ids;
    };
    int64_t longest_target = 0;
    for (int64_t i : chosen) {
      const auto& item = all.items[static_cast<size_t>(i)];
      inputs_.push_back(encode(item.text, item.source));
      targets_.push_back(encode(all.classes[static_cast<size_t>(item.label)], item.source));
      longest_target = std::max<int64_t>(longest_target, static_cast<int64_t>(targets_.back().size()));
    }
    describe_ = msg(name, " (", o.split, "): ", with_commas(size()), " input -> target pairs (",
                    all.classes.size(), " distinct targets, up to ", longest_target,
                    " target tokens; inputs up to ", o.seq_len, ")");
  }

  DataKind kind() const override { return DataKind::TextPairs; }
  int64_t size() const override { return static_cast<int64_t>(inputs_.size()); }
  std::string describe() const override { return describe_; }

  Example batch(const std::vector<int64_t>& indices) const override {
    const auto b = static_cast<int64_t>(indices.size());
    size_t s = 1, t = 1;
    for (int64_t i : indices) {
      RECAST_CHECK(i >= 0 && i < size(), "example ", i, " out of range [0, ", size(), ")");
      s = std::max(s, inputs_[static_cast<size_t>(i)].size());
      t = std::max(t, targets_[static_cast<size_t>(i)].size());
    }
    const auto S = static_cast<int64_t>(s), T = static_cast<int64_t>(t);
    at::Tensor x = at::full({b, S}, pad_, at::kLong), mask = at::zeros({b, S}, at::kLong);
    at::Tensor y = at::full({b, T}, -100, at::kLong);
    Example ex;
    for (int64_t r = 0; r < b; ++r) {
      const auto& in = inputs_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
      const auto& out = targets_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
      std::copy(in.begin(), in.end(), x.data_ptr<int64_t>() + r * S);
      std::fill_n(mask.data_ptr<int64_t>() + r * S, in.size(), 1);
      std::copy(out.begin(), out.end(), y.data_ptr<int64_t>() + r * T);
      ex.tokens += static_cast<int64_t>(out.size());
    }
    at::Tensor dec = at::full({b, T}, start_, at::kLong);
    dec.narrow(1, 1, T - 1).copy_(y.narrow(1, 0, T - 1));
    ex.inputs.input_ids = x;
    ex.inputs.attention_mask = mask;
    ex.inputs.decoder_input_ids = dec.masked_fill(dec.eq(-100), pad_);
    ex.labels = y;
    return ex;
  }

 private:
  int64_t start_, pad_;
  std::vector<std::vector<int64_t>> inputs_, targets_;
  std::string describe_;
};

class TextClassificationDataset : public Dataset {
 public:
  TextClassificationDataset(const std::string& name, const io::LabeledTexts& all,
                            const DataOptions& o, const io::Tokenizer& tok)
      : seq_len_(o.seq_len), classes_(all.classes) {
    const auto chosen =
        split_indices(static_cast<int64_t>(all.items.size()), o.seed, 0.1, 0.1, o.split);
    if (chosen.empty()) {
      throw Error(msg("data ", quote(name), " (", o.split, "): empty data set"));
    }
    for (int64_t i : chosen) {
      const auto& item = all.items[static_cast<size_t>(i)];
      auto ids = tok.encode(item.text);
      if (ids.empty() && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
      if (ids.empty()) throw Error(msg(item.source, ": empty text"));
      // Keep the start (headers and first lines carry most of an e-mail's signal).
      if (static_cast<int64_t>(ids.size()) > seq_len_) ids.resize(static_cast<size_t>(seq_len_));
      ids_.emplace_back(ids.begin(), ids.end());
      labels_.push_back(item.label);
    }
    std::vector<int64_t> count(classes_.size(), 0);
    for (auto l : labels_) ++count[static_cast<size_t>(l)];
    std::string counts;
    for (size_t c = 0; c < classes_.size(); ++c) {
      counts += msg(c ? ", " : "", classes_[c], " ", count[c]);
    }
    describe_ = msg(name, " (", o.split, "): ", with_commas(size()), " texts (", counts,
                    "), up to ", seq_len_, " tokens each");
  }

  DataKind kind() const override { return DataKind::TextClassification; }
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  std::string describe() const override { return describe_; }
  const std::vector<std::string>& classes() const override { return classes_; }

  Example batch(const std::vector<int64_t>& indices) const override {
    const auto b = static_cast<int64_t>(indices.size());
    int64_t t = 1;
    for (auto i : indices) t = std::max<int64_t>(t, ids_[static_cast<size_t>(i)].size());
    at::Tensor x = at::zeros({b, t}, at::kLong), m = at::zeros({b, t}, at::kLong),
               y = at::empty({b}, at::kLong);
    for (int64_t r = 0; r < b; ++r) {
      const auto& ids = ids_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
      for (size_t k = 0; k < ids.size(); ++k) {
        x[r][static_cast<int64_t>(k)] = ids[k];
      }
      m[r].narrow(0, 0, static_cast<int64_t>(ids.size())).fill_(1);
      y[r] = labels_[static_cast<size_t>(indices[static_cast<size_t>(r)])];
    }
    Example ex;
    ex.inputs.input_ids = x;
    ex.inputs.attention_mask = m;
    ex.labels = y;
    ex.tokens = b;
    return ex;
  }

 private:
  int64_t seq_len_;
  std::vector<std::string> classes_;
  std::vector<std::vector<int32_t>> ids_;
  std::vector<int64_t> labels_;
  std::string describe_;
};

// ---------------------------------------------------------------- images

class ImageDataset : public Dataset {
 public:
  ImageDataset(const std::string& name, std::shared_ptr<const io::ImageSet> set,
               std::vector<int64_t> chosen, const std::string& split, Normalization norm,
               ImageTransform transform)
      : set_(std::move(set)), chosen_(std::move(chosen)), norm_(std::move(norm)), t_(transform) {
    if (chosen_.empty()) throw Error(msg("data ", quote(name), " (", split, "): empty data set"));
    out_channels_ = t_.channels > 0 ? t_.channels : set_->channels;
    if (out_channels_ != set_->channels && !(set_->channels == 1 && out_channels_ == 3)) {
      throw UsageError(msg("data ", quote(name), ": ", set_->channels, "-channel images cannot be given to a model of ",
                           out_channels_, " channels (only grey to RGB, by repetition)"));
    }
    // A grey normalisation for RGB-repeated grey images: the same per channel.
    if (out_channels_ == 3 && set_->channels == 1 && norm_.mean.size() == 1 && norm_.std.size() == 1) {
      norm_.mean.assign(3, norm_.mean[0]);
      norm_.std.assign(3, norm_.std[0]);
    }
    RECAST_CHECK(static_cast<int64_t>(norm_.mean.size()) == out_channels_ &&
                     norm_.std.size() == norm_.mean.size(),
                 "image normalisation: expected ", out_channels_, " channel means and stds, found ",
                 norm_.mean.size(), " and ", norm_.std.size());
    if (split != "train") t_.crop_pad = 0, t_.hflip = false;
    RECAST_CHECK(t_.crop_pad >= 0 && t_.crop_pad <= std::min(set_->height, set_->width),
                 "--crop-pad ", t_.crop_pad, ": expected at most the image's side (", std::min(set_->height, set_->width), ")");
    describe_ = msg(name, " (", split, "): ", with_commas(size()), " images ", set_->channels, "x",
                    set_->height, "x", set_->width, ", ", set_->classes.size(), " classes");
    if (t_.size > 0 || out_channels_ != set_->channels) {
      describe_ += msg(", given as ", out_channels_, "x", height(), "x", width());
    }
    if (t_.augments()) {
      describe_ += msg(", augmented (", t_.crop_pad > 0 ? msg("random crop, padding ", t_.crop_pad) : std::string(),
                       t_.crop_pad > 0 && t_.hflip ? ", " : "", t_.hflip ? "horizontal flip" : "", ")");
    }
  }
  DataKind kind() const override { return DataKind::ImageClassification; }
  int64_t size() const override { return static_cast<int64_t>(chosen_.size()); }
  std::string describe() const override { return describe_; }
  const std::vector<std::string>& classes() const override { return set_->classes; }

  Example batch(const std::vector<int64_t>& indices) const override { return training_batch(indices, 0); }

  Example training_batch(const std::vector<int64_t>& indices, uint64_t draw) const override {
    const auto b = static_cast<int64_t>(indices.size());
    const int64_t c = set_->channels, h = set_->height, w = set_->width, hw = h * w, per = c * hw;
    at::Tensor raw = at::empty({b, c, h, w}, at::kByte);
    at::Tensor y = at::empty({b}, at::kLong);
    auto* dst = raw.data_ptr<uint8_t>();
    auto* py = y.data_ptr<int64_t>();
    for (int64_t r = 0; r < b; ++r) {
      const int64_t idx = indices[static_cast<size_t>(r)];
      const int64_t i = chosen_[static_cast<size_t>(idx)];
      const uint8_t* src = set_->pixels.data() + i * per;
      py[r] = set_->labels[static_cast<size_t>(i)];
      if (!t_.augments()) {
        std::copy_n(src, per, dst + r * per);
        continue;
      }
      // This example's crop offset and flip, from (seed, draw, index).
      uint64_t state = t_.seed ^ (draw * 0x9E3779B97F4A7C15ULL) ^ (static_cast<uint64_t>(idx) * 0xD1B54A32D192ED03ULL);
      const int64_t span = 2 * t_.crop_pad + 1;
      const int64_t dy = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(span)) - t_.crop_pad;
      const int64_t dx = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(span)) - t_.crop_pad;
      const bool flip = t_.hflip && (splitmix64(state) & 1) != 0;
      uint8_t* out = dst + r * per;
      for (int64_t ch = 0; ch < c; ++ch) {
        for (int64_t yy = 0; yy < h; ++yy) {
          const int64_t sy = yy + dy;
          for (int64_t xx = 0; xx < w; ++xx) {
            const int64_t sx = (flip ? w - 1 - xx : xx) + dx;
            out[ch * hw + yy * w + xx] = sy >= 0 && sy < h && sx >= 0 && sx < w ? src[ch * hw + sy * w + sx] : 0;
          }
        }
      }
    }
    at::Tensor x = raw.to(at::kFloat).div_(255.0);
    if (t_.size > 0 && (t_.size != h || t_.size != w)) {
      x = at::upsample_bilinear2d(x, {t_.size, t_.size}, /*align_corners=*/false);
    }
    if (out_channels_ != c) x = x.repeat({1, out_channels_, 1, 1});
    at::Tensor mean = at::tensor(norm_.mean, at::kDouble).to(at::kFloat).view({1, out_channels_, 1, 1});
    at::Tensor stdv = at::tensor(norm_.std, at::kDouble).to(at::kFloat).view({1, out_channels_, 1, 1});
    Example ex;
    ex.inputs.pixel_values = x.sub_(mean).div_(stdv);
    ex.labels = y;
    ex.tokens = b;
    return ex;
  }

 private:
  int64_t height() const { return t_.size > 0 ? t_.size : set_->height; }
  int64_t width() const { return t_.size > 0 ? t_.size : set_->width; }

  std::shared_ptr<const io::ImageSet> set_;
  std::vector<int64_t> chosen_;
  Normalization norm_;
  ImageTransform t_;
  int64_t out_channels_ = 0;
  std::string describe_;
};

std::unique_ptr<Dataset> open_images(const std::string& name, const io::ImageSet& train_set,
                                     const io::ImageSet* test_set, const DataOptions& o,
                                     Normalization* norm, Normalization defaults) {
  Normalization use = norm && !norm->mean.empty() ? *norm : defaults;
  if (norm && norm->mean.empty()) *norm = use;
  if (test_set && o.split == "test") {
    auto set = std::make_shared<const io::ImageSet>(*test_set);
    std::vector<int64_t> all(static_cast<size_t>(set->count));
    std::iota(all.begin(), all.end(), 0);
    return std::make_unique<ImageDataset>(name, set, all, o.split, use, o.image);
  }
  // With a separate test set, the file's own split gives train + val only.
  const double test_fraction = test_set ? 0.0 : 0.1;
  auto set = std::make_shared<const io::ImageSet>(train_set);
  return std::make_unique<ImageDataset>(
      name, set, split_indices(set->count, o.seed, 0.1, test_fraction, o.split), o.split, use, o.image);
}

io::LabeledTexts read_spam_assassin(const std::string& dir) {
  io::LabeledTexts out;
  out.classes = {"ham", "spam"};
  for (const char* group : {"easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"}) {
    const int64_t label = std::string(group).rfind("spam", 0) == 0 ? 1 : 0;
    // The .json copies: their "text" is valid UTF-8 (the raw .txt e-mails are
    // often Latin-1).
    for (const auto& doc : io::read_text_documents((fs::path(dir) / group / "*.json").string())) {
      out.items.push_back({doc.source, doc.text, label});
    }
  }
  return out;
}

const io::Tokenizer& need_tokenizer(const io::Tokenizer* tok, const std::string& spec) {
  if (!tok) throw Error(msg("data ", quote(spec), ": text data needs a tokenizer"));
  return *tok;
}

}  // namespace

models::Batch to_device(const models::Batch& batch, c10::Device device, bool non_blocking) {
  models::Batch out = batch;
  for (at::Tensor* t : {&out.input_ids, &out.attention_mask, &out.pixel_values, &out.position_ids,
                        &out.decoder_input_ids}) {
    if (t->defined()) *t = t->to(device, non_blocking);
  }
  return out;
}

const char* data_kind_name(DataKind kind) {
  switch (kind) {
    case DataKind::Text: return "text";
    case DataKind::TextClassification: return "text-classification";
    case DataKind::ImageClassification: return "image-classification";
    case DataKind::TextPairs: return "text-pairs";
  }
  return "?";
}

std::string data_root() {
  if (const char* env = std::getenv("RECAST_DATA_DIR"); env && *env) return env;
  std::error_code ec;
  if (fs::is_directory("data", ec)) return "data";
  // build/recast-engine -> build/../data
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path p = exe.parent_path(); !p.empty() && p != p.root_path(); p = p.parent_path()) {
      if (fs::is_directory(p / "data", ec)) return (p / "data").string();
    }
  }
  return "data";
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

DataKind sniff_data_kind(const std::string& spec) {
  if (spec == "spam-assassin") return DataKind::TextClassification;
  if (spec == "fashion-mnist") return DataKind::ImageClassification;
  if (is_named(spec)) return DataKind::Text;
  if (io::looks_like_image_folder(spec)) return DataKind::ImageClassification;
  if (ends_with(spec, ".jsonl") && io::is_regular_file(spec)) {
    // A labelled JSONL: its first record has a "label".
    const std::string head = io::read_prefix(spec, 1 << 20);
    const std::string first = head.substr(0, head.find('\n'));
    try {
      const auto obj = nlohmann::json::parse(first);
      if (obj.is_object() && obj.contains("label")) return DataKind::TextClassification;
      if (obj.is_object() && obj.contains("input") && obj.contains("target")) return DataKind::TextPairs;
    } catch (const nlohmann::json::exception&) {
      // read_text_documents reports the malformed line with its number.
    }
  }
  return DataKind::Text;
}

std::unique_ptr<Dataset> open_dataset(const DataOptions& o, const io::Tokenizer* tokenizer,
                                      Normalization* norm) {
  check_split(o.split);
  const std::string& spec = o.spec;
  if (spec.empty()) throw UsageError("--data: expected a named data set or a path, found ''");
  if (spec == "fashion-mnist") {
    const fs::path dir = named_dir(spec);
    auto train_set = io::read_idx_images((dir / "train-images-idx3-ubyte.gz").string(),
                                         (dir / "train-labels-idx1-ubyte.gz").string(),
                                         kFashionClasses);
    std::unique_ptr<io::ImageSet> test_set;
    if (o.split == "test") {
      test_set = std::make_unique<io::ImageSet>(
          io::read_idx_images((dir / "t10k-images-idx3-ubyte.gz").string(),
                              (dir / "t10k-labels-idx1-ubyte.gz").string(), kFashionClasses));
    }
    return open_images(spec, train_set, test_set ? test_set.get() : &train_set, o, norm,
                       {{0.2860}, {0.3530}});
  }
  switch (sniff_data_kind(spec)) {
    case DataKind::ImageClassification: {
      const auto set = io::read_image_folder(spec);
      Normalization defaults{std::vector<double>(static_cast<size_t>(set.channels), 0.5),
                             std::vector<double>(static_cast<size_t>(set.channels), 0.5)};
      return open_images(spec, set, nullptr, o, norm, defaults);
    }
    case DataKind::TextClassification: {
      const auto& tok = need_tokenizer(tokenizer, spec);
      const auto texts = spec == "spam-assassin" ? read_spam_assassin(named_dir(spec))
                                                 : io::read_labeled_jsonl(spec, o.text_field);
      if (o.text_to_text) return std::make_unique<TextToTextDataset>(spec, texts, o, tok);
      return std::make_unique<TextClassificationDataset>(spec, texts, o, tok);
    }
    case DataKind::TextPairs: {
      const auto& tok = need_tokenizer(tokenizer, spec);
      if (!o.text_to_text) {
        throw UsageError(msg("--data ", quote(spec), " holds input / target pairs: an encoder-decoder's data"));
      }
      // Each distinct target is a "class" of read_labeled_jsonl: its name is the text.
      return std::make_unique<TextToTextDataset>(spec, io::read_labeled_jsonl(spec, "input", "target"), o, tok);
    }
    case DataKind::Text: {
      const auto& tok = need_tokenizer(tokenizer, spec);
      if (o.span_corruption) return open_span_corruption(spec, text_documents(spec, o.text_field), o, tok);
      return std::make_unique<TextLmDataset>(spec, text_documents(spec, o.text_field), o, tok);
    }
  }
  throw Error("unreachable");
}

// ---------------------------------------------------------------- Loader

Loader::Loader(int64_t size, int64_t batch_size, uint64_t seed, bool shuffle, bool drop_last)
    : size_(size), batch_(batch_size), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  RECAST_CHECK(batch_ >= 1, "batch size: expected >= 1, found ", batch_);
  if (size_ < 1 || (drop_last_ && size_ < batch_)) {
    throw Error(msg("empty data set: ", size_, " examples, fewer than one batch of ", batch_));
  }
  start_epoch(0);
}

void Loader::start_epoch(int64_t epoch) {
  epoch_ = epoch;
  cursor_ = 0;
  if (shuffle_) {
    order_ = permutation(size_, seed_ * 0x100000001B3ULL + static_cast<uint64_t>(epoch));
  } else {
    order_.resize(static_cast<size_t>(size_));
    std::iota(order_.begin(), order_.end(), 0);
  }
}

int64_t Loader::batches_per_epoch() const {
  return drop_last_ ? size_ / batch_ : (size_ + batch_ - 1) / batch_;
}

bool Loader::at_epoch_end() const {
  return drop_last_ ? cursor_ + batch_ > size_ : cursor_ >= size_;
}

std::vector<int64_t> Loader::next() {
  if (at_epoch_end()) start_epoch(epoch_ + 1);
  const int64_t end = std::min(size_, cursor_ + batch_);
  std::vector<int64_t> out(order_.begin() + cursor_, order_.begin() + end);
  cursor_ = end;
  return out;
}

nlohmann::json Loader::state() const {
  return {{"epoch", epoch_}, {"cursor", cursor_}, {"seed", seed_}, {"size", size_},
          {"batch_size", batch_}, {"shuffle", shuffle_}};
}

void Loader::restore(const nlohmann::json& s) {
  try {
    const auto size = s.at("size").get<int64_t>();
    const auto batch = s.at("batch_size").get<int64_t>();
    const auto seed = s.at("seed").get<uint64_t>();
    if (size != size_ || batch != batch_ || seed != seed_ || s.at("shuffle").get<bool>() != shuffle_) {
      throw Error(msg("data loader state is for ", size, " examples in batches of ", batch,
                      " with seed ", seed, ", but this run has ", size_, ", ", batch_, " and ",
                      seed_, " (different --data, --batch-size, --seq-len or --seed)"));
    }
    const auto epoch = s.at("epoch").get<int64_t>();
    const auto cursor = s.at("cursor").get<int64_t>();
    if (epoch < 0 || cursor < 0 || cursor > size_) {
      throw Error(msg("data loader state: epoch ", epoch, " cursor ", cursor, " out of range"));
    }
    start_epoch(epoch);
    cursor_ = cursor;
  } catch (const nlohmann::json::exception& e) {
    throw Error(msg("data loader state: ", e.what()));
  }
}

}  // namespace recast::train
