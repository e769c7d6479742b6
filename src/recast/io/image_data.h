#pragma once

// Labelled images in memory as unsigned bytes, [N, C, H, W] row-major, from an
// image folder (one sub-folder per class, PNG / JPEG / BMP / GIF decoded by
// stb_image from Debian's libstb) or from Fashion-MNIST-style IDX files.

#include <cstdint>
#include <string>
#include <vector>

namespace recast::io {

struct ImageSet {
  int64_t count = 0, channels = 0, height = 0, width = 0;
  std::vector<uint8_t> pixels;  // count x channels x height x width
  std::vector<int64_t> labels;  // count, each < classes.size()
  std::vector<std::string> classes;
  std::vector<std::string> sources;  // file per image (empty for IDX sets)
};

// DIR/<class>/<image>: classes are the sub-folder names, sorted. Every image
// must have the size of the first; `channels` 0 keeps the first image's
// channel count (grey 1, RGB 3; alpha is dropped), else converts to it.
// Errors name the file: undecodable image, wrong size, empty class folder.
ImageSet read_image_folder(const std::string& dir, int channels = 0);

// True when DIR has sub-folders holding image files (a quick sniff, by name).
bool looks_like_image_folder(const std::string& dir);

// Fashion-MNIST / MNIST: images + labels IDX files (gzip or raw).
ImageSet read_idx_images(const std::string& images_path, const std::string& labels_path,
                         std::vector<std::string> classes);

}  // namespace recast::io
