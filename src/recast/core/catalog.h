#pragma once

// What recast can do, by kind ("model", "recipe", ...): every Registry adds its
// entries here so that `recast list` shows them without knowing the registries.

#include <map>
#include <string>
#include <vector>

namespace recast {

struct CatalogEntry {
  std::string name;
  std::string summary;
};

void catalog_add(const std::string& kind, const std::string& name, const std::string& summary);
// kind -> entries sorted by name.
std::map<std::string, std::vector<CatalogEntry>> catalog();

}  // namespace recast
