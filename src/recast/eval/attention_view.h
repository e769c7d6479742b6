#pragma once

// What `recast analyze` shows of a T-CNN or a refined ViT: for one input
// image and one query position, every head's attention over the keys of each
// layer, with the numbers that summarise it, drawn as PNG or SVG.
//
// T-CNN: a ConvAttention's picture is its K x K block of heads laid out as
// the taps they started from (head i*K + j at row i, column j), each a heat
// map over the padded key grid (the zero ring included).
// Refiner: each refined attention gives two rows, its softmax maps before
// refinement ("raw") and after ("refined"), one heat map per head over the
// patch grid (the CLS key's weight in the numbers, not the picture); the
// refined map's negative weights show as 0.
// The query's own position is outlined; the input image, with the query
// marked, sits on the left.

#include "recast/draw/figure.h"
#include "recast/models/model.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

namespace recast::eval {

struct LayerAttention {
  std::string name;          // "layer4.0.conv1", "blocks.3.attn"
  std::string variant;       // "" (T-CNN), "raw" or "refined" (Refiner)
  int64_t kernel = 0, stride = 1;
  int64_t columns = 1;       // heads per row in the picture (T-CNN: K; Refiner: all)
  int64_t pad = 0;           // the zero ring around the key grid (T-CNN: K / 2)
  int64_t query_row = 0, query_col = 0;  // on the layer's output grid
  int64_t in_h = 0, in_w = 0;            // the layer's input grid
  at::Tensor maps;           // [heads, in_h + 2 pad, in_w + 2 pad] float, CPU: A_h[query, :]
  std::vector<double> gate;  // per head
  // Per head: the key with the most weight, as (dy, dx) from the query in the
  // layer's input pixels (Refiner: patches), its weight, and
  // sum_k A[q, k] ||pos_k - pos_q|| (Refiner: over the patch keys, with the
  // weights max(A, 0) renormalised over them, as layers::summarise_maps).
  std::vector<std::pair<int64_t, int64_t>> peak;
  std::vector<double> peak_weight, distance;
  std::vector<double> cls_weight;  // Refiner: the weight on the CLS key, per head

  nlohmann::json to_json() const;
};

// Runs `model` on `pixels` [1, C, H, W] (normalised as the model expects) and
// collects the attention of every ConvAttention (or refined attention, by its
// attention's name "blocks.N.attn") whose name `layers` matches
// (std::regex_search). The query is given in input-image pixels (y, x) and is
// mapped to each layer's output grid (patch grid) by its relative position.
// Throws recast::Error when the model has neither, or none matches.
std::vector<LayerAttention> attention_at(models::Model& model, const at::Tensor& pixels,
                                         double query_y, double query_x, const std::regex& layers);

// The picture, drawn to PNG or SVG by Figure::encode: `image01` [C, H, W] in
// [0, 1] (C = 1 or 3) is the input shown beside each layer, (query_y, query_x)
// marked on it. Each layer's items carry its name as their group; roles
// "title", "image", "head" (text, key: the head), "map" (one raster per head)
// and "query" (the red outlines).
draw::Figure attention_figure(const std::vector<LayerAttention>& layers, const at::Tensor& image01,
                              double query_y, double query_x);

// Viridis-like colour of v in [0, 1] (clamped), for the heat maps.
void heat_colour(double v, uint8_t rgb[3]);

}  // namespace recast::eval
