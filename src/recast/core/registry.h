#pragma once

// Name -> factory registries (models, recipes, feature maps, objectives).
// Unknown names fail with the list of known ones; `recast list` prints them.

#include "recast/core/catalog.h"
#include "recast/core/error.h"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace recast {

template <typename Factory>
class Registry {
 public:
  struct Item {
    std::string summary;
    Factory factory;
  };

  explicit Registry(std::string kind) : kind_(std::move(kind)) {}

  // Registers `name`; registering a name twice is a programming error.
  bool add(const std::string& name, std::string summary, Factory factory) {
    if (!items_.emplace(name, Item{summary, std::move(factory)}).second) {
      throw Error(msg("duplicate ", kind_, " registration ", quote(name)));
    }
    catalog_add(kind_, name, summary);
    return true;
  }

  const Item& get(const std::string& name) const {
    auto it = items_.find(name);
    if (it == items_.end()) {
      throw UsageError(msg("unknown ", kind_, " ", quote(name),
                           " (known: ", names().empty() ? std::string("none") : joined(), ")"));
    }
    return it->second;
  }

  bool contains(const std::string& name) const { return items_.count(name) != 0; }
  const std::map<std::string, Item>& items() const { return items_; }
  const std::string& kind() const { return kind_; }

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : items_) out.push_back(kv.first);
    return out;
  }

 private:
  std::string joined() const {
    std::string out;
    for (const auto& kv : items_) out += (out.empty() ? "" : ", ") + kv.first;
    return out;
  }
  std::string kind_;
  std::map<std::string, Item> items_;
};

}  // namespace recast
