#include "recast/io/image_data.h"

#include "recast/core/error.h"
#include "recast/io/idx.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <filesystem>
#include <memory>

namespace fs = std::filesystem;

namespace recast::io {
namespace {

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".gif";
}

std::vector<fs::path> sorted_entries(const fs::path& dir, bool directories) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (directories ? e.is_directory() : (e.is_regular_file() && is_image_name(e.path()))) {
      out.push_back(e.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

bool looks_like_image_folder(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const auto& sub : sorted_entries(dir, true)) {
    if (!sorted_entries(sub, false).empty()) return true;
  }
  return false;
}

ImageSet read_image_folder(const std::string& dir, int channels) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(msg(dir, ": not a directory"));
  if (channels < 0 || channels > 4) {
    throw UsageError(msg("image channels: expected 0 (as stored), 1, 3 or 4, found ", channels));
  }
  ImageSet set;
  const auto class_dirs = sorted_entries(dir, true);
  if (class_dirs.empty()) {
    throw Error(msg(dir, ": no class sub-folders (expected DIR/<class>/<image>.png)"));
  }
  if (channels == 0) {  // as the first image stores them: grey 1, colour 3 (alpha dropped)
    for (const auto& class_dir : class_dirs) {
      const auto files = sorted_entries(class_dir, false);
      if (files.empty()) continue;
      int w = 0, h = 0, c = 0;
      if (!stbi_info(files.front().string().c_str(), &w, &h, &c)) {
        throw Error(msg(files.front().string(), ": cannot decode image (", stbi_failure_reason(),
                        ")"));
      }
      channels = c >= 3 ? 3 : 1;
      break;
    }
  }
  for (const auto& class_dir : class_dirs) {
    const auto files = sorted_entries(class_dir, false);
    if (files.empty()) {
      throw Error(msg(class_dir.string(), ": class folder holds no PNG/JPEG/BMP/GIF images"));
    }
    const auto label = static_cast<int64_t>(set.classes.size());
    set.classes.push_back(class_dir.filename().string());
    for (const auto& file : files) {
      const std::string path = file.string();
      int w = 0, h = 0, c = 0;
      std::unique_ptr<stbi_uc, void (*)(void*)> data(
          stbi_load(path.c_str(), &w, &h, &c, channels), stbi_image_free);
      if (!data) {
        throw Error(msg(path, ": cannot decode image (", stbi_failure_reason(), ")"));
      }
      if (set.count == 0) {
        set.height = h, set.width = w;
        set.channels = channels;
      } else if (h != set.height || w != set.width) {
        throw Error(msg(path, ": image is ", w, "x", h, ", expected ", set.width, "x",
                        set.height, " like ", set.sources.front()));
      }
      // stb returns pixels interleaved (HWC) with `channels` channels.
      const int64_t hw = set.height * set.width;
      const size_t base = set.pixels.size();
      set.pixels.resize(base + static_cast<size_t>(set.channels * hw));
      for (int64_t ch = 0; ch < set.channels; ++ch) {
        for (int64_t i = 0; i < hw; ++i) {
          set.pixels[base + static_cast<size_t>(ch * hw + i)] = data.get()[i * channels + ch];
        }
      }
      set.labels.push_back(label);
      set.sources.push_back(path);
      ++set.count;
    }
  }
  return set;
}

ImageSet read_idx_images(const std::string& images_path, const std::string& labels_path,
                         std::vector<std::string> classes) {
  const auto raw =
      read_idx_classification(images_path, labels_path, static_cast<int>(classes.size()));
  ImageSet set;
  set.count = raw.count;
  set.channels = 1;
  set.height = raw.rows;
  set.width = raw.cols;
  set.pixels = raw.images;
  set.labels.assign(raw.labels.begin(), raw.labels.end());
  set.classes = std::move(classes);
  return set;
}

}  // namespace recast::io
