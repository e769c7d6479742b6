// recast convert --recipe NAME --model DIR --out DIR [--layers REGEX] [--data SPEC] [recipe options]
// Recasts a pretrained checkpoint; OUT is a checkpoint directory every verb
// accepts (its config says how it was converted) plus recast_manifest.json
// with the recipe, its options and the per-layer error report. Each recipe's
// options come from its registration (recasts/recast.h) as an option group;
// this file names no recipe.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/device.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/core/version.h"
#include "recast/io/file.h"
#include "recast/models/seq2seq.h"
#include "recast/recasts/recast.h"

#include <torch/torch.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <algorithm>
#include <map>
#include <optional>

namespace fs = std::filesystem;

namespace recast::cli {
namespace {

struct ConvertCli {
  std::string recipe, model, out, layers, data, device = "cpu";
  int64_t batch_size = 8, seq_len = 128;
  uint64_t seed = 0;
  int threads = 0;
  // Every recipe's options as given, by recipe then key.
  std::map<std::string, nlohmann::json> values;
  // Which recipes each option belongs to (for misuse errors): a flag that
  // several recipes declare (--kernel, --transfer-steps) is one option
  // whose value reaches each of them.
  std::vector<std::pair<std::vector<std::string>, CLI::Option*>> owned;
};

// The source's data for the recipe: the probe the per-layer error is
// measured on (test images / validation text, else random inputs) and the
// training split.
struct ConvertData {
  std::unique_ptr<train::Dataset> train;
  models::Batch probe;
};

ConvertData open_data(const ConvertCli& o, models::Model& source, const io::Tokenizer* tok,
                      const nlohmann::json& source_manifest, c10::Device device) {
  ConvertData d;
  if (o.data.empty()) {
    d.probe = train::to_device(source.example_batch(4, o.seed), device);
    return d;
  }
  const bool images = source.task() == models::Task::ImageClassification;
  train::Normalization norm = normalization_of(source.config());
  if (!images && !tok) throw Error(msg(o.model, ": no tokenizer files; --data needs them"));
  train::DataOptions opts{o.data, images ? "test" : "val", split_seed_of(source_manifest),
                          o.seq_len, "text"};
  if (images) opts.image = image_input_of(source.config(), source_manifest);
  if (auto* s2s = dynamic_cast<models::Seq2SeqModel*>(&source)) {
    // An encoder-decoder reads plain text as its span corruption (with the
    // noise it was pretrained with) and labelled text or pairs text to text.
    const train::DataKind kind = train::sniff_data_kind(o.data);
    if (kind == train::DataKind::ImageClassification) {
      throw UsageError(msg("--data ", quote(o.data), " is image data; --model ", quote(o.model),
                           " is an encoder-decoder"));
    }
    opts.decoder_start = s2s->decoder_start_token();
    opts.pad = s2s->pad_token();
    if (kind == train::DataKind::Text) {
      opts.span_corruption = true;
      if (source_manifest.contains("noise_density") && source_manifest["noise_density"].is_number()) {
        opts.noise_density = source_manifest["noise_density"];
      }
      if (source_manifest.contains("mean_span") && source_manifest["mean_span"].is_number()) {
        opts.mean_span = source_manifest["mean_span"];
      }
    } else {
      opts.text_to_text = true;
    }
  } else {
    check_data_fits(source.task(), o.data, msg("--model ", quote(o.model)));
  }
  auto probe_split = train::open_dataset(opts, images ? nullptr : tok, &norm);
  train::Loader probe_loader(probe_split->size(), o.batch_size, 0, false, false);
  d.probe = train::to_device(probe_split->batch(probe_loader.next()).inputs, device);
  opts.split = "train";
  d.train = train::open_dataset(opts, images ? nullptr : tok, &norm);
  return d;
}

// Prints the recipe's report and writes the converted checkpoint and its
// manifest into `tmp`.
void write_conversion(const ConvertCli& o, recasts::Conversion& c,
                      const nlohmann::json& source_manifest, const io::Tokenizer* tok,
                      const fs::path& tmp) {
  if (c.table.empty()) {
    log::info("converted ", c.report.size(), " layers (", o.recipe, "); error of each "
              "layer's output against the layer it replaced, on the same inputs:");
    recasts::print_report(c.report, "at init");
  } else {
    log::info("converted ", c.report.size(), " layers (", o.recipe, "):");
    std::fputs(c.table.c_str(), stdout);
  }
  for (const auto& [title, report] : c.later) recasts::print_report(report, title.c_str());
  std::fflush(stdout);
  if (c.manifest.contains("logits_change") && !c.manifest["logits_change"].is_null()) {
    const auto& lc = c.manifest["logits_change"];
    const auto& same = lc["same_argmax"];
    log::info("whole network on ", o.data.empty() ? "random inputs" : o.data,
              ": logits max abs change ", lc["max_abs"].get<double>(), " (relative ",
              lc["relative"].get<double>(), "), ",
              same.is_boolean() ? (same.get<bool>() ? "same predictions" : "DIFFERENT predictions")
                                : msg(same.get<double>() * 100, "% of predictions unchanged"));
  }
  nlohmann::json manifest = {{"made_by", "recast convert"},
                             {"from", o.model},
                             {"recast_version", RECAST_VERSION},
                             {"conversion", c.manifest},
                             {"error_at_init", recasts::report_json(c.report)}};
  for (const auto& [key, value] : c.extra.items()) manifest[key] = value;
  // Carry the source's training facts (split, seq_len, image size) so eval
  // and finetune pick the same split and input.
  for (const char* key : {"seed", "seq_len", "data", "tokenizer", "image_size"}) {
    if (source_manifest.contains(key)) manifest[key] = source_manifest[key];
  }
  manifest["split_seed"] = split_seed_of(source_manifest);
  fs::remove_all(tmp / ".work");
  c.model->to(c10::kCPU);
  models::save_model(*c.model, tmp.string());
  if (tok) tok->save(tmp.string());
  io::write_file_atomic((tmp / "recast_manifest.json").string(), manifest.dump(2) + "\n");
}

// A flag shared by several recipes is checked against the union of their
// ranges while parsing; here against the chosen recipe's own.
void check_ranges(const std::vector<recasts::OptionSpec>& specs, const nlohmann::json& values) {
  using T = recasts::OptionSpec::Type;
  for (const auto& s : specs) {
    if (!values.is_object() || !values.contains(s.key) || (s.type != T::Int && s.type != T::Double)) continue;
    const double v = values.at(s.key).get<double>();
    if (v < s.min || v > s.max || (s.open_min && v == s.min)) {
      throw UsageError(msg(s.flag, ": expected a value in ", s.open_min ? "(" : "[", s.min, ", ", s.max,
                           "], found ", values.at(s.key).dump()));
    }
  }
}

int run_convert(const ConvertCli& o) {
  set_threads(o.threads);
  const c10::Device device = select_device(o.device);
  const recasts::Recast& recipe = recasts::get(o.recipe);
  for (const auto& [owners, opt] : o.owned) {
    if (opt->count() == 0 || std::find(owners.begin(), owners.end(), o.recipe) != owners.end()) continue;
    std::string list;
    for (const auto& r : owners) list += (list.empty() ? "" : ", ") + r;
    throw UsageError(msg(opt->get_name(), " is an option of --recipe ", list, ", not ", o.recipe));
  }
  check_ranges(recipe.convert_options(), o.values.count(o.recipe) ? o.values.at(o.recipe) : nlohmann::json());
  // In a data-parallel run (attention transfer under torchrun / recast
  // launch) every rank converts and trains; rank 0 alone writes --out (and
  // alone checks it: another rank may look after rank 0 has written it).
  const bool writer = train::dist_env().rank == 0;
  check_output_dir(o.out, "--out", /*must_be_empty=*/writer);
  std::optional<io::OutputLock> lock;
  if (writer) lock.emplace(o.out, "--out");
  models::ModelPtr source = models::load_model(o.model);
  const nlohmann::json source_manifest = manifest_of(o.model);  // its training facts
  source->to(device);
  std::unique_ptr<io::Tokenizer> tok = tokenizer_of_checkpoint(o.model);
  ConvertData data = open_data(o, *source, tok.get(), source_manifest, device);

  // Everything goes into a temporary directory renamed into place at the end.
  const fs::path out(o.out);
  if (writer) {
    io::remove_orphaned_temps(out.has_parent_path() ? out.parent_path().string() : ".",
                              out.filename().string());
  }
  const fs::path tmp = io::temp_beside(o.out);
  fs::remove_all(tmp);
  signals::TempPath guard(tmp.string());  // removed on SIGINT / SIGTERM
  recasts::RecipeOptions ro;
  auto given = o.values.find(o.recipe);
  ro.values = recasts::with_fallbacks(
      recipe.convert_options(), given == o.values.end() ? nlohmann::json::object() : given->second);
  ro.layers = o.layers;
  ro.seed = o.seed;
  ro.probe = data.probe;
  ro.data = o.data;
  ro.train_data = data.train.get();
  ro.batch_size = o.batch_size;
  ro.device = device;
  ro.work_dir = (tmp / ".work").string();
  if (data.train) {
    // N shuffled training batches (the same for every use).
    ro.training_batches = [&](int64_t n) {
      std::vector<models::Batch> batches;
      train::Loader loader(data.train->size(), o.batch_size, o.seed, /*shuffle=*/true, true);
      for (int64_t i = 0; i < n; ++i) {
        batches.push_back(train::to_device(data.train->batch(loader.next()).inputs, device));
      }
      return batches;
    };
  }
  try {
    recasts::Conversion c = recipe.convert(*source, ro);
    if (!writer) {
      fs::remove_all(tmp);
      return 0;
    }
    write_conversion(o, c, source_manifest, tok.get(), tmp);
    if (fs::exists(out)) fs::remove(out);  // empty (checked above)
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  log::info("wrote ", o.out);
  return 0;
}

}  // namespace

Runner add_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertCli>();
  auto* cmd = app.add_subcommand("convert", verb_info("convert").summary);
  std::string names;
  for (const auto& n : recasts::registry().names()) names += (names.empty() ? "" : ", ") + n;
  cmd->add_option("--recipe", o->recipe, "Recipe (see 'recast list'): " + names)->required();
  cmd->add_option("--model", o->model, "Checkpoint directory to convert")->required();
  cmd->add_option("--out", o->out, "Directory for the converted checkpoint (new or empty)")
      ->required();
  cmd->add_option("--layers", o->layers,
                  "Regex searched in each module's checkpoint name, e.g. 'h\\.[0-5]\\.' "
                  "(default: every replaceable module)");
  cmd->add_option("--data", o->data,
                  "Data for the error report (text; images for image models), and for recipes "
                  "that calibrate or train on it");
  cmd->add_option("--batch-size", o->batch_size, "Batch size of --data's batches (default 8)")
      ->check(integer_in(1, 1 << 20));
  cmd->add_option("--seq-len", o->seq_len, "Text window of --data (default 128)")
      ->check(integer_in(1, 1 << 24));
  cmd->add_option("--seed", o->seed, "Seed of the new parameters and the data order (0)");
  cmd->add_option("--device", o->device, "cpu, cuda, cuda:N or auto (default cpu)");
  cmd->add_option("--threads", o->threads, "CPU threads (default: every core)")
      ->check(integer_in(0, 4096));
  // Each recipe's own options, as a group of its own; a flag that several
  // recipes declare (of one type) is one option of the first one's group,
  // with every owner's help and the union of their ranges.
  struct Shared {
    recasts::OptionSpec spec;
    std::vector<std::pair<std::string, std::string>> owners;  // recipe, key
    CLI::App* group;
  };
  std::vector<Shared> flags;
  for (const auto& [name, item] : recasts::registry().items()) {
    const auto specs = item.factory->convert_options();
    if (specs.empty()) continue;
    auto* group = cmd->add_option_group(name, "Options of --recipe " + name);
    for (const auto& spec : specs) {
      auto same = std::find_if(flags.begin(), flags.end(), [&](const Shared& f) { return f.spec.flag == spec.flag; });
      if (same == flags.end()) {
        flags.push_back({spec, {{name, spec.key}}, group});
        continue;
      }
      RECAST_CHECK(same->spec.type == spec.type, "recipes declare ", spec.flag, " with different types");
      same->spec.help += "; " + spec.help;
      same->spec.min = std::min(same->spec.min, spec.min), same->spec.max = std::max(same->spec.max, spec.max);
      same->spec.open_min = same->spec.open_min && spec.open_min;
      same->owners.emplace_back(name, spec.key);
    }
  }
  for (const auto& f : flags) {
    std::vector<std::pair<nlohmann::json*, std::string>> targets;
    std::vector<std::string> owners;
    for (const auto& [recipe, key] : f.owners) targets.emplace_back(&o->values[recipe], key), owners.push_back(recipe);
    CLI::Option* opt = add_option_spec(f.group, f.spec, [targets](const nlohmann::json& v) {
      for (const auto& [values, key] : targets) (*values)[key] = v;
    });
    o->owned.emplace_back(owners, opt);
  }
  return [o] { return run_convert(*o); };
}

}  // namespace recast::cli
