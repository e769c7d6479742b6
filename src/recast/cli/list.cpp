// recast list [--json]: the registered model families and recipes.

#include "recast/cli/verbs.h"
#include "recast/core/catalog.h"
#include "recast/layers/linear_attention.h"
#include "recast/recasts/recast.h"
#include "recast/models/model.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace recast::cli {
namespace {

struct ListOptions {
  bool json = false;
};

// Kinds always shown, even while nothing of that kind is registered.
constexpr const char* kKinds[] = {"model", "recipe"};

int run_list(const ListOptions& o) {
  models::model_registry();  // registers the model families in the catalog
  recasts::registry();
  layers::feature_map_registry();
  auto entries = catalog();
  for (const char* kind : kKinds) entries[kind];
  if (o.json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const auto& [kind, items] : entries) {
      nlohmann::ordered_json list = nlohmann::ordered_json::array();
      for (const auto& item : items)
        list.push_back({{"name", item.name}, {"summary", item.summary}});
      out[kind + "s"] = list;
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  for (const auto& [kind, items] : entries) {
    std::printf("%ss:\n", kind.c_str());
    if (items.empty()) std::printf("  (none registered yet)\n");
    for (const auto& item : items)
      std::printf("  %-24s %s\n", item.name.c_str(), item.summary.c_str());
  }
  return 0;
}

}  // namespace

Runner add_list(CLI::App& app) {
  auto o = std::make_shared<ListOptions>();
  auto* cmd = app.add_subcommand("list", verb_info("list").summary);
  cmd->add_flag("--json", o->json, "Print JSON");
  return [o] { return run_list(*o); };
}

}  // namespace recast::cli
