#pragma once

// One drawing path for every picture recast writes (training curves, attention
// maps): a Figure records primitives in pixel coordinates, and cairo draws the
// same list to PNG or to SVG, text included. The recorded list is what tests
// read: which series a panel has, where its points lie, what the labels say,
// without parsing either file format.
//
// Text is UTF-8; bytes that are not (a file name, say) and control characters
// are drawn as U+FFFD. Fonts come from fontconfig ("sans-serif": DejaVu Sans
// on Debian).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace recast::draw {

struct Colour {
  double r = 0, g = 0, b = 0, a = 1;  // 0..1

  static Colour rgb8(uint8_t r, uint8_t g, uint8_t b, double a = 1);
  // "#1f77b4"; throws std::invalid_argument on anything else (a programming error).
  static Colour hex(std::string_view text);
  bool operator==(const Colour& o) const {
    return r == o.r && g == o.g && b == o.b && a == o.a;
  }
};

struct Point {
  double x = 0, y = 0;
};

enum class Anchor { start, middle, end };

struct Font {
  double size = 11;
  bool bold = false, italic = false;
};

// What a figure is made of. `group` and `role` say what an item shows ("loss" /
// "series", "" / "header"), `key` which of several (a series' split); the
// drawing ignores all three.
struct Item {
  enum class Kind { fill_rect, stroke_rect, polyline, dots, text, raster };
  Kind kind = Kind::fill_rect;
  std::string group, role, key;
  Colour colour;
  double x = 0, y = 0, w = 0, h = 0;  // rects and rasters; text: the anchor point (baseline)
  double stroke = 1;                  // line width; dots: radius
  std::vector<Point> points;          // polyline (2 for a line), dots
  std::string text;                   // sanitised UTF-8
  Font font;
  Anchor anchor = Anchor::start;
  // raster: px_w x px_h RGB pixels, row-major, each drawn as a w/px_w x h/px_h cell.
  int64_t px_w = 0, px_h = 0;
  std::vector<uint8_t> rgb;
};

enum class Format { png, svg };

// The format a path asks for by its extension (.png / .svg, any case).
std::optional<Format> format_of(const std::string& path);
const char* format_name(Format f);

// `text` as valid UTF-8 on one line: invalid bytes and control characters
// (newlines included) become U+FFFD.
std::string printable(std::string_view text);

// The width `text` takes in `font` (cairo's measure, so layouts fit).
double text_width(const std::string& text, const Font& font);

// The largest picture drawn as PNG: 16384 pixels a side, 64 M pixels in all.
constexpr int64_t kMaxPngSide = 16384;
constexpr int64_t kMaxPngPixels = int64_t{64} << 20;

class Figure {
 public:
  Figure(double width, double height, Colour background = Colour{1, 1, 1, 1});

  // Everything drawn after this call carries `group` (until the next call).
  void set_group(std::string group) { group_ = std::move(group); }

  void fill_rect(double x, double y, double w, double h, Colour c, std::string role = "");
  void stroke_rect(double x, double y, double w, double h, Colour c, double stroke = 1,
                   std::string role = "");
  void line(Point a, Point b, Colour c, double stroke = 1, std::string role = "",
            std::string key = "");
  void polyline(std::vector<Point> points, Colour c, double stroke = 1.5, std::string role = "",
                std::string key = "");
  void dots(std::vector<Point> centres, double radius, Colour c, std::string role = "",
            std::string key = "");
  void text(double x, double y, std::string_view text, Font font, Colour c,
            Anchor anchor = Anchor::start, std::string role = "", std::string key = "");
  // `rgb`: px_w x px_h pixels (3 bytes each), drawn at (x, y) with each pixel a
  // cell x cell square, unsmoothed.
  void raster(double x, double y, int64_t px_w, int64_t px_h, std::vector<uint8_t> rgb,
              int64_t cell, std::string role = "");

  // For layouts that know their extent only once drawn (rounded up to whole pixels).
  void set_size(double width, double height);
  double width() const { return width_; }
  double height() const { return height_; }
  const std::vector<Item>& items() const { return items_; }
  // The items of one group / role (empty strings match any).
  std::vector<const Item*> find(std::string_view group, std::string_view role,
                                std::string_view key = {}) const;

  // The encoded file. Throws recast::Error when cairo fails or the picture is
  // larger than a PNG may be (kMaxPngSide, kMaxPngPixels), naming its size.
  std::string png() const;
  std::string svg() const;
  std::string encode(Format f) const { return f == Format::png ? png() : svg(); }

 private:
  Item& add(Item::Kind kind, Colour c, std::string role, std::string key = "");

  double width_, height_;
  Colour background_;
  std::string group_;
  std::vector<Item> items_;
};

}  // namespace recast::draw
