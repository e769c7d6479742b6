#include "recast/core/catalog.h"

#include <algorithm>
#include <mutex>

namespace recast {
namespace {

struct Store {
  std::mutex mutex;
  std::map<std::string, std::vector<CatalogEntry>> entries;
};

Store& store() {
  static Store s;
  return s;
}

}  // namespace

void catalog_add(const std::string& kind, const std::string& name, const std::string& summary) {
  std::lock_guard<std::mutex> lock(store().mutex);
  store().entries[kind].push_back({name, summary});
}

std::map<std::string, std::vector<CatalogEntry>> catalog() {
  std::lock_guard<std::mutex> lock(store().mutex);
  auto out = store().entries;
  for (auto& [kind, entries] : out) {
    std::sort(entries.begin(), entries.end(),
              [](const CatalogEntry& a, const CatalogEntry& b) { return a.name < b.name; });
  }
  return out;
}

}  // namespace recast
