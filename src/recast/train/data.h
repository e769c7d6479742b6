#pragma once

// Data sets as the trainer sees them: a named set (sotu, moby-dick,
// spam-assassin, fashion-mnist) or a path, split deterministically by seed into
// train / val / test, turned into batches of tensors; and a Loader that walks
// seeded permutations epoch after epoch and whose position can be saved and
// restored (exact resume).

#include "recast/io/text_data.h"
#include "recast/io/tokenizer.h"
#include "recast/models/model.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace recast::train {

// TextPairs: JSONL of {"input": ..., "target": ...} (encoder-decoders).
enum class DataKind { Text, TextClassification, ImageClassification, TextPairs };
const char* data_kind_name(DataKind kind);

// How image examples are shaped on their way out (data.cpp, ImageDataset):
// the stored image, for training randomly cropped from it padded by
// `crop_pad` pixels on each side (zeros) and flipped left-right (`hflip`),
// then resized to `size` x `size` (bilinear, align_corners false, as
// torchvision's Resize without antialiasing), a grey image repeated to
// `channels` 3 where the model wants RGB, then normalised. The crop and the
// flip are drawn per example from (seed, draw, example index): the same on
// every run, rank and resume.
struct ImageTransform {
  int64_t size = 0;      // 0: as stored
  int64_t channels = 0;  // 0: as stored; 3 from a grey set: repeated
  int64_t crop_pad = 0;  // 0: no random crop
  bool hflip = false;
  uint64_t seed = 0;
  bool augments() const { return crop_pad > 0 || hflip; }
};

struct DataOptions {
  std::string spec;             // named set or path (file, directory, glob)
  std::string split = "train";  // train | val | test | all
  uint64_t seed = 0;            // the split's seed (not the shuffling's)
  int64_t seq_len = 128;        // LM window / classification truncation / encoder input
  std::string text_field = "text";
  // Text as T5's span corruption (train/span_corruption.h) for an
  // encoder-decoder: seq_len encoder tokens per example, the decoder's
  // targets as long as T5's random_spans_helper makes them.
  bool span_corruption = false;
  double noise_density = 0.15, mean_span = 3.0;
  int64_t decoder_start = 0;  // decoder_input_ids = [start, targets[:-1]]
  // Text-to-text for an encoder-decoder: labelled text (the class name is the
  // target) or TextPairs; inputs and targets truncated to seq_len tokens
  // (their </s> kept), padded per batch with `pad` (labels with -100).
  bool text_to_text = false;
  int64_t pad = 0;
  // Images: resize / channels for every split, the augmentation for the
  // train split only.
  ImageTransform image = {};
};

// A batch: model inputs plus targets ([B, T] next tokens for LMs, [B] labels
// for classifiers).
struct Example {
  models::Batch inputs;
  at::Tensor labels;
  int64_t tokens = 0;  // target tokens (LMs) or examples (classifiers)
  int64_t bytes = 0;   // bytes of text the LM targets stand for (bits per byte)
};

// The documents of a text SPEC: a named set (sotu, moby-dick) or a path.
std::vector<io::Document> text_documents(const std::string& spec, const std::string& field = "text");

// A text split as one token stream: each document's own ids (no BOS / EOS
// the tokenizer adds) followed by EOS. Twenty documents or more are split by
// document (5 % val, 5 % test, by seed), fewer by position (the tail).
struct TextTokens {
  std::vector<int32_t> tokens;
  int64_t documents = 0;
  bool by_document = true;
};
TextTokens text_split_tokens(const std::vector<io::Document>& docs, const DataOptions& options,
                             const io::Tokenizer& tokenizer);

// The batch's tensors on `device` (pixel values in `dtype` when given).
models::Batch to_device(const models::Batch& batch, c10::Device device, bool non_blocking = false);

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual DataKind kind() const = 0;
  // Examples in this split (LM: windows of seq_len + 1 tokens).
  virtual int64_t size() const = 0;
  virtual Example batch(const std::vector<int64_t>& indices) const = 0;
  // The same, for the `draw`-th batch of a training run (it seeds the random
  // augmentation of data sets that have one; the others ignore it).
  virtual Example training_batch(const std::vector<int64_t>& indices, uint64_t draw) const {
    (void)draw;
    return batch(indices);
  }
  // "sotu (train): 4,123 windows of 128 tokens from 210 documents"
  virtual std::string describe() const = 0;
  // Class names (classifiers), empty for LMs.
  virtual const std::vector<std::string>& classes() const { return no_classes_; }

 private:
  std::vector<std::string> no_classes_;
};

// Image normalisation written into the model's config ("pretrained_cfg":
// {"mean": [...], "std": [...]}, as timm does) so that eval uses the training one.
struct Normalization {
  std::vector<double> mean, std;
};

// Opens SPEC's split. `tokenizer` is required for text; `norm` (images) is
// filled when empty with the data set's own values and used as given otherwise.
std::unique_ptr<Dataset> open_dataset(const DataOptions& options, const io::Tokenizer* tokenizer,
                                      Normalization* norm = nullptr);

// What SPEC holds, without reading it all.
DataKind sniff_data_kind(const std::string& spec);

// Where named sets live: $RECAST_DATA_DIR, else ./data (scripts/fetch-data.sh),
// else data/ beside the executable's source tree.
std::string data_root();

// Seeded permutation of [0, n) (Fisher-Yates over splitmix64): the same on every
// platform and library, unlike std::shuffle.
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

class Loader {
 public:
  // drop_last: every batch has `batch_size` examples (training); otherwise the
  // last batch of an epoch may be short (evaluation).
  Loader(int64_t size, int64_t batch_size, uint64_t seed, bool shuffle, bool drop_last);

  // The next batch's indices; moves to the next epoch (a new permutation) when
  // this one is used up.
  std::vector<int64_t> next();
  int64_t epoch() const { return epoch_; }
  int64_t batches_per_epoch() const;
  // True when next() would start a new epoch.
  bool at_epoch_end() const;

  // {"epoch": E, "cursor": C, "seed": S, "size": N, "batch_size": B}
  nlohmann::json state() const;
  // Throws when the state was saved for another data set size / batch / seed.
  void restore(const nlohmann::json& state);

 private:
  void start_epoch(int64_t epoch);
  int64_t size_, batch_, epoch_ = 0, cursor_ = 0;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  std::vector<int64_t> order_;
};

}  // namespace recast::train
