// recast tokenize --model DIR (--text T | --file F) [--json] [--no-special]
//   Prints the ids of the text as the checkpoint's tokenizer gives them, with
//   the special tokens it adds by default (T5: </s> appended; Llama's
//   tokenizer.model: <s> prepended; GPT-2: none) unless --no-special.
// recast tokenizer train --data SPEC --vocab-size N [--model-type unigram|bpe] --out DIR
//   Trains a SentencePiece model on the text of SPEC with the sentencepiece
//   library, in T5's layout (pad 0, </s> 1, <unk> 2; 100 <extra_id_N> above
//   the N pieces), and writes DIR/spiece.model + tokenizer_config.json, which
//   pretrain --tokenizer DIR and every verb that reads a checkpoint's
//   tokenizer take.

#include "recast/cli/train_common.h"
#include "recast/cli/verbs.h"
#include "recast/core/error.h"
#include "recast/core/log.h"
#include "recast/io/file.h"
#include "recast/io/sentencepiece.h"
#include "recast/train/data.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

namespace recast::cli {
namespace {

struct TokenizeCli {
  std::string model, text, file;
  bool json = false, no_special = false;
  const CLI::Option* text_opt = nullptr;
};

int run_tokenize(const TokenizeCli& o) {
  const bool has_text = o.text_opt->count() > 0;
  if (has_text == !o.file.empty()) throw UsageError("give --text TEXT or --file FILE, not both");
  if (!io::is_directory(o.model)) {
    throw UsageError(msg("--model ", quote(o.model), ": expected a directory with tokenizer files"));
  }
  std::unique_ptr<io::Tokenizer> tok = io::load_tokenizer(o.model);
  log::debug("tokenizer: ", io::tokenizer_source(o.model), " (", tok->kind(), ", ", tok->vocab_size(), " ids)");
  std::string text = o.text;
  if (!o.file.empty()) {
    if (!io::is_regular_file(o.file)) {
      throw UsageError(msg("--file ", quote(o.file), ": ", io::path_problem(o.file)));
    }
    std::ifstream in(o.file, std::ios::binary);
    std::ostringstream all;
    all << in.rdbuf();
    text = all.str();
  }
  std::vector<int64_t> ids;
  try {
    ids = o.no_special ? tok->encode_plain(text) : tok->encode(text);
  } catch (const Error& e) {
    throw e.with_context(o.file.empty() ? std::string("--text") : o.file);
  }
  if (o.json) {
    std::cout << nlohmann::json({{"ids", ids}}).dump() << "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
    std::cout << "\n";
  }
  return 0;
}

struct TrainTokenizerCli {
  std::string data, out, model_type = "unigram", text_field = "text";
  int64_t vocab_size = 0;
};

int run_train_tokenizer(const TrainTokenizerCli& o) {
  check_output_dir(o.out, "--out", /*must_be_empty=*/false);
  // Every non-empty line of every document is one sentence.
  std::vector<std::string> lines;
  for (const auto& doc : train::text_documents(o.data, o.text_field)) {
    std::istringstream in(doc.text);
    for (std::string line; std::getline(in, line);) {
      if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
    }
  }
  log::info("training a ", o.model_type, " SentencePiece model of ", o.vocab_size, " pieces on ",
            lines.size(), " lines of ", o.data);
  const std::string proto = io::train_sentencepiece(lines, o.vocab_size, o.model_type);
  io::SentencePieceConventions c;
  c.extra_ids = 100;
  c.add_eos = true;
  auto tok = io::SentencePieceTokenizer::from_serialized(proto, c, "trained model");
  tok->save(o.out);
  log::info("wrote ", o.out, "/spiece.model (", tok->vocab_size(), " ids with 100 sentinels)");
  return 0;
}

}  // namespace

Runner add_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeCli>();
  auto* cmd = app.add_subcommand("tokenize", verb_info("tokenize").summary);
  cmd->add_option("--model", o->model, "Checkpoint or tokenizer directory")->required();
  o->text_opt = cmd->add_option("--text", o->text, "The text to tokenize");
  cmd->add_option("--file", o->file, "A UTF-8 file to tokenize (whole)");
  cmd->add_flag("--json", o->json, "Print {\"ids\": [...]}");
  cmd->add_flag("--no-special", o->no_special,
                "Leave out the special tokens the tokenizer adds (</s>, <s>)");
  return [o] { return run_tokenize(*o); };
}

Runner add_tokenizer(CLI::App& app) {
  auto o = std::make_shared<TrainTokenizerCli>();
  auto* cmd = app.add_subcommand("tokenizer", verb_info("tokenizer").summary);
  cmd->require_subcommand(1);
  auto* train_cmd = cmd->add_subcommand(
      "train", "Train a SentencePiece tokenizer (T5 layout, 100 sentinels) on a text data set");
  train_cmd->add_option("--data", o->data, "sotu, moby-dick, or a text file / directory / glob / .jsonl")
      ->required();
  train_cmd->add_option("--vocab-size", o->vocab_size, "Pieces to learn (the sentinels come on top)")
      ->required()
      ->check(integer_in(8, 1 << 22));
  train_cmd->add_option("--model-type", o->model_type, "unigram (T5's) or bpe (default unigram)")
      ->check(CLI::IsMember({"unigram", "bpe"}));
  train_cmd->add_option("--text-field", o->text_field, "JSON field holding the text (default text)");
  train_cmd->add_option("--out", o->out, "Directory for spiece.model + tokenizer_config.json")
      ->required();
  return [o] { return run_train_tokenizer(*o); };
}

}  // namespace recast::cli
