#include "recast/draw/figure.h"

#include "recast/core/error.h"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <memory>
#include <stdexcept>

namespace recast::draw {

Colour Colour::rgb8(uint8_t r, uint8_t g, uint8_t b, double a) {
  return {r / 255.0, g / 255.0, b / 255.0, a};
}

Colour Colour::hex(std::string_view text) {
  auto digit = [&](size_t i) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw std::invalid_argument("Colour::hex: not a hex digit");
  };
  if (text.size() != 7 || text[0] != '#') throw std::invalid_argument("Colour::hex: expected #rrggbb");
  auto byte = [&](size_t i) { return static_cast<uint8_t>(digit(i) * 16 + digit(i + 1)); };
  return rgb8(byte(1), byte(3), byte(5));
}

std::optional<Format> format_of(const std::string& path) {
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return std::nullopt;
  std::string ext = path.substr(dot + 1);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == "png") return Format::png;
  if (ext == "svg") return Format::svg;
  return std::nullopt;
}

const char* format_name(Format f) { return f == Format::png ? "PNG" : "SVG"; }

std::string printable(std::string_view s) {
  static const char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (b0 < 0x80) {
      n = 1;
      cp = b0;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 4;
      cp = b0 & 0x07;
    }
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      ok = (b & 0xC0) == 0x80;
      cp = (cp << 6) | (b & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    if (ok && ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
               (cp >= 0xD800 && cp <= 0xDFFF))) {
      ok = false;
    }
    if (!ok) {
      out += kReplacement;
      ++i;  // resynchronise on the next byte
      continue;
    }
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
      out += kReplacement;
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

namespace {

constexpr double kPi = 3.14159265358979323846;

struct SurfaceDeleter {
  void operator()(cairo_surface_t* s) const { cairo_surface_destroy(s); }
};
struct ContextDeleter {
  void operator()(cairo_t* c) const { cairo_destroy(c); }
};
using Surface = std::unique_ptr<cairo_surface_t, SurfaceDeleter>;
using Context = std::unique_ptr<cairo_t, ContextDeleter>;

void check(cairo_status_t status, const char* what) {
  if (status != CAIRO_STATUS_SUCCESS) {
    throw Error(msg("cannot draw the picture: ", what, ": ", cairo_status_to_string(status)));
  }
}

void set_font(cairo_t* cr, const Font& font) {
  cairo_select_font_face(cr, "sans-serif",
                         font.italic ? CAIRO_FONT_SLANT_ITALIC : CAIRO_FONT_SLANT_NORMAL,
                         font.bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, font.size);
}

void set_colour(cairo_t* cr, const Colour& c) { cairo_set_source_rgba(cr, c.r, c.g, c.b, c.a); }

// Axis-aligned 1-pixel strokes on whole coordinates would straddle two pixel
// rows: moved to the pixel centre they draw crisp.
double crisp(double v, double stroke) {
  const double odd = std::fmod(std::lround(stroke), 2) == 1 ? 0.5 : 0.0;
  return std::floor(v) + odd;
}

void draw_raster(cairo_t* cr, const Item& it) {
  const auto cell = static_cast<int64_t>(std::lround(it.w / static_cast<double>(it.px_w)));
  const int w = static_cast<int>(it.px_w * cell), h = static_cast<int>(it.px_h * cell);
  Surface img(cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h));
  check(cairo_surface_status(img.get()), "raster");
  cairo_surface_flush(img.get());
  unsigned char* data = cairo_image_surface_get_data(img.get());
  const int stride = cairo_image_surface_get_stride(img.get());
  for (int y = 0; y < h; ++y) {
    auto* row = reinterpret_cast<uint32_t*>(data + static_cast<ptrdiff_t>(y) * stride);
    const size_t src_row = static_cast<size_t>(y / cell) * static_cast<size_t>(it.px_w);
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = &it.rgb[(src_row + static_cast<size_t>(x / cell)) * 3];
      row[x] = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | uint32_t{p[2]};
    }
  }
  cairo_surface_mark_dirty(img.get());
  cairo_set_source_surface(cr, img.get(), std::round(it.x), std::round(it.y));
  cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
  cairo_rectangle(cr, std::round(it.x), std::round(it.y), w, h);
  cairo_fill(cr);
}

void draw_items(cairo_t* cr, double width, double height, Colour background,
                const std::vector<Item>& items) {
  set_colour(cr, background);
  cairo_rectangle(cr, 0, 0, width, height);
  cairo_fill(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_BUTT);
  for (const Item& it : items) {
    switch (it.kind) {
      case Item::Kind::fill_rect:
        set_colour(cr, it.colour);
        cairo_rectangle(cr, it.x, it.y, it.w, it.h);
        cairo_fill(cr);
        break;
      case Item::Kind::stroke_rect: {
        set_colour(cr, it.colour);
        cairo_set_line_width(cr, it.stroke);
        const double x0 = crisp(it.x, it.stroke), y0 = crisp(it.y, it.stroke);
        const double x1 = crisp(it.x + it.w, it.stroke), y1 = crisp(it.y + it.h, it.stroke);
        cairo_rectangle(cr, x0, y0, x1 - x0, y1 - y0);
        cairo_stroke(cr);
        break;
      }
      case Item::Kind::polyline: {
        if (it.points.empty()) break;
        set_colour(cr, it.colour);
        cairo_set_line_width(cr, it.stroke);
        std::vector<Point> pts = it.points;
        if (pts.size() == 2 && (pts[0].x == pts[1].x || pts[0].y == pts[1].y)) {
          for (auto& p : pts) {
            if (pts[0].x == pts[1].x) p.x = crisp(p.x, it.stroke);
            if (pts[0].y == pts[1].y) p.y = crisp(p.y, it.stroke);
          }
        }
        cairo_move_to(cr, pts[0].x, pts[0].y);
        for (size_t i = 1; i < pts.size(); ++i) cairo_line_to(cr, pts[i].x, pts[i].y);
        cairo_stroke(cr);
        break;
      }
      case Item::Kind::dots:
        set_colour(cr, it.colour);
        for (const Point& p : it.points) {
          cairo_new_sub_path(cr);
          cairo_arc(cr, p.x, p.y, it.stroke, 0, 2 * kPi);
        }
        cairo_fill(cr);
        break;
      case Item::Kind::text: {
        set_colour(cr, it.colour);
        set_font(cr, it.font);
        cairo_text_extents_t ext;
        cairo_text_extents(cr, it.text.c_str(), &ext);
        const double shift = it.anchor == Anchor::start    ? 0
                             : it.anchor == Anchor::middle ? ext.x_advance / 2
                                                           : ext.x_advance;
        cairo_move_to(cr, it.x - shift, it.y);
        cairo_show_text(cr, it.text.c_str());
        cairo_new_path(cr);
        break;
      }
      case Item::Kind::raster:
        draw_raster(cr, it);
        break;
    }
  }
  check(cairo_status(cr), "drawing");
}

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

}  // namespace

double text_width(const std::string& text, const Font& font) {
  thread_local Surface surface(cairo_image_surface_create(CAIRO_FORMAT_A8, 1, 1));
  thread_local Context cr(cairo_create(surface.get()));
  set_font(cr.get(), font);
  cairo_text_extents_t ext;
  const std::string t = printable(text);
  cairo_text_extents(cr.get(), t.c_str(), &ext);
  check(cairo_status(cr.get()), "measuring text");
  return ext.x_advance;
}

Figure::Figure(double width, double height, Colour background)
    : width_(std::max(1.0, std::ceil(width))),
      height_(std::max(1.0, std::ceil(height))),
      background_(background) {}

void Figure::set_size(double width, double height) {
  width_ = std::max(1.0, std::ceil(width));
  height_ = std::max(1.0, std::ceil(height));
}

Item& Figure::add(Item::Kind kind, Colour c, std::string role, std::string key) {
  Item& it = items_.emplace_back();
  it.kind = kind;
  it.colour = c;
  it.group = group_;
  it.role = std::move(role);
  it.key = std::move(key);
  return it;
}

void Figure::fill_rect(double x, double y, double w, double h, Colour c, std::string role) {
  Item& it = add(Item::Kind::fill_rect, c, std::move(role));
  it.x = x;
  it.y = y;
  it.w = w;
  it.h = h;
}

void Figure::stroke_rect(double x, double y, double w, double h, Colour c, double stroke,
                         std::string role) {
  Item& it = add(Item::Kind::stroke_rect, c, std::move(role));
  it.x = x;
  it.y = y;
  it.w = w;
  it.h = h;
  it.stroke = stroke;
}

void Figure::line(Point a, Point b, Colour c, double stroke, std::string role, std::string key) {
  polyline({a, b}, c, stroke, std::move(role), std::move(key));
}

void Figure::polyline(std::vector<Point> points, Colour c, double stroke, std::string role,
                      std::string key) {
  Item& it = add(Item::Kind::polyline, c, std::move(role), std::move(key));
  it.points = std::move(points);
  it.stroke = stroke;
}

void Figure::dots(std::vector<Point> centres, double radius, Colour c, std::string role,
                  std::string key) {
  Item& it = add(Item::Kind::dots, c, std::move(role), std::move(key));
  it.points = std::move(centres);
  it.stroke = radius;
}

void Figure::text(double x, double y, std::string_view text, Font font, Colour c, Anchor anchor,
                  std::string role, std::string key) {
  Item& it = add(Item::Kind::text, c, std::move(role), std::move(key));
  it.x = x;
  it.y = y;
  it.text = printable(text);
  it.font = font;
  it.anchor = anchor;
}

void Figure::raster(double x, double y, int64_t px_w, int64_t px_h, std::vector<uint8_t> rgb,
                    int64_t cell, std::string role) {
  RECAST_CHECK(px_w > 0 && px_h > 0 && cell > 0 &&
                   rgb.size() == static_cast<size_t>(px_w * px_h * 3),
               "Figure::raster: ", px_w, "x", px_h, " pixels need ", px_w * px_h * 3,
               " bytes, found ", rgb.size());
  Item& it = add(Item::Kind::raster, Colour{}, std::move(role));
  it.x = x;
  it.y = y;
  it.px_w = px_w;
  it.px_h = px_h;
  it.w = static_cast<double>(px_w * cell);
  it.h = static_cast<double>(px_h * cell);
  it.rgb = std::move(rgb);
}

std::vector<const Item*> Figure::find(std::string_view group, std::string_view role,
                                      std::string_view key) const {
  std::vector<const Item*> out;
  for (const Item& it : items_) {
    if ((group.empty() || it.group == group) && (role.empty() || it.role == role) &&
        (key.empty() || it.key == key)) {
      out.push_back(&it);
    }
  }
  return out;
}

std::string Figure::png() const {
  const auto w = static_cast<int64_t>(width_), h = static_cast<int64_t>(height_);
  if (w > kMaxPngSide || h > kMaxPngSide || w * h > kMaxPngPixels) {
    throw Error(msg("the picture would be ", w, "x", h, " pixels, more than a PNG is drawn at (",
                    kMaxPngSide, " a side, ", kMaxPngPixels >> 20,
                    " M pixels); draw less of it, or write an SVG"));
  }
  Surface surface(
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(w), static_cast<int>(h)));
  check(cairo_surface_status(surface.get()), "PNG surface");
  {
    Context cr(cairo_create(surface.get()));
    draw_items(cr.get(), width_, height_, background_, items_);
  }
  std::string out;
  check(cairo_surface_write_to_png_stream(surface.get(), append_bytes, &out), "PNG encoding");
  return out;
}

std::string Figure::svg() const {
  std::string out;
  {
    Surface surface(cairo_svg_surface_create_for_stream(append_bytes, &out, width_, height_));
    check(cairo_surface_status(surface.get()), "SVG surface");
    cairo_svg_surface_set_document_unit(surface.get(), CAIRO_SVG_UNIT_PX);
    {
      Context cr(cairo_create(surface.get()));
      draw_items(cr.get(), width_, height_, background_, items_);
    }
    cairo_surface_finish(surface.get());
    check(cairo_surface_status(surface.get()), "SVG encoding");
  }
  return out;
}

}  // namespace recast::draw
