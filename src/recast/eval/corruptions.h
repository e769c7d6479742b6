#pragma once

// ImageNet-C-style corruptions (Hendrycks & Dietterich 2019) at severities
// 1-5, for robustness evaluation (`recast eval --corrupt`). The parameters are
// those of CIFAR-10-C (make_cifar_c.py), which was made for 32x32 images like
// the small data sets here. Images are float [B, C, H, W] in [0, 1] (C = 1 or
// 3); the result is in [0, 1] too. Random corruptions draw from a generator
// seeded with `seed`, so a given (batch, seed) is corrupted the same way every
// time and for every model compared.
//
//   gaussian_noise  x + N(0, s)
//   shot_noise      Poisson(x * s) / s
//   impulse_noise   salt and pepper on a fraction s of the values
//   defocus_blur    disk kernel of radius r, softened by a Gaussian (sigma a)
//   motion_blur     one-sided line kernel of radius r, Gaussian weights (sigma),
//                   at a random angle per image (ImageMagick's motion blur in
//                   CIFAR-10-C; here a kernel, not a call to ImageMagick)
//   contrast        (x - mean) * s + mean
//   brightness      the HSV value channel + s (C = 1: x + s)
//   pixelate        area-downsample to s * size, nearest-upsample back
//   jpeg            JPEG at quality s (stb_image_write), decoded again

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace recast::eval {

const std::vector<std::string>& corruption_names();

struct Corruption {
  std::string name;
  int severity = 1;  // 1..5
};

// "all", "NAME" (severities 1-5), "NAME:S", or a comma-separated list of these.
// Unknown names and severities outside 1-5 are usage errors naming them.
std::vector<Corruption> parse_corruptions(const std::string& spec);

at::Tensor corrupt(const at::Tensor& images, const Corruption& c, uint64_t seed);

}  // namespace recast::eval
