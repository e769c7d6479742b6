#pragma once

// Malformed (and borderline-valid) safetensors files built in-process, one per
// rule of the format; shared by the reader tests and the CLI tests.

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace recast::testing {

// 8-byte little-endian length + header text + data.
inline std::string safetensors_bytes(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

inline std::string raw_length(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

struct MalformedCase {
  std::string name;
  std::string bytes;
  std::string expected;  // substring of the error; empty = the file is valid
};

// gtest prints parameters in test names and failures: the case name suffices.
inline void PrintTo(const MalformedCase& c, std::ostream* os) {
  *os << c.name;
}

inline std::vector<MalformedCase> malformed_cases() {
  const std::string f32x4(16, '\x01');
  const std::string ok_t = R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  auto one = [&](const std::string& entry, const std::string& data) {
    return safetensors_bytes("{" + entry + "}", data);
  };
  std::string deep(100000, '[');
  // One case per line reads as a table.
  // clang-format off
  return {
      // length prefix
      {"empty_file", "", "too small"},
      {"seven_bytes", std::string(7, '\0'), "too small"},
      {"header_over_limit", raw_length(100000001) + "{}", "exceeds the 100000000-byte limit"},
      {"header_length_max_u64", raw_length(~uint64_t{0}), "exceeds"},
      {"header_past_eof", raw_length(64) + "{}", "runs past the end of the file"},
      {"header_length_zero", raw_length(0), "not valid JSON"},
      // JSON syntax and encoding
      {"not_json", safetensors_bytes("hello world"), "not valid JSON"},
      {"truncated_json", safetensors_bytes(R"({"t":{"dtype":"F32")"), "not valid JSON"},
      {"invalid_utf8", safetensors_bytes("{\"\xff\xfe\":{}}"), "not valid JSON"},
      {"overlong_utf8", safetensors_bytes("{\"\xc0\xaf\":{}}"), "not valid JSON"},
      {"byte_order_mark", safetensors_bytes("\xEF\xBB\xBF{}"), "byte-order mark"},
      {"trailing_garbage", safetensors_bytes("{} x"), "not valid JSON"},
      {"nul_padding", safetensors_bytes(std::string("{}") + std::string(6, '\0')), "NUL byte at offset 2"},
      {"nul_then_garbage", safetensors_bytes(std::string("{}", 2) + std::string(1, '\0') + "{\"x\":1}"), "NUL byte"},
      {"comment", safetensors_bytes("{/* c */}"), "not valid JSON"},
      {"header_is_array", safetensors_bytes("[]"), "must be a JSON object, found array"},
      {"header_is_string", safetensors_bytes("\"x\""), "must be a JSON object, found string"},
      {"header_is_number", safetensors_bytes("12"), "must be a JSON object"},
      {"deep_nesting_unclosed", safetensors_bytes("{\"t\":{\"x\":" + deep), "not valid JSON"},
      // tensor entries
      {"entry_not_object", safetensors_bytes(R"({"t":[1,2]})"), "tensor 't': entry must be an object, found array"},
      {"entry_null", safetensors_bytes(R"({"t":null})"), "entry must be an object, found null"},
      {"missing_dtype", safetensors_bytes(R"({"t":{"shape":[],"data_offsets":[0,0]}})"), "missing field 'dtype'"},
      {"missing_shape", safetensors_bytes(R"({"t":{"dtype":"F32","data_offsets":[0,0]}})"), "missing field 'shape'"},
      {"missing_offsets", safetensors_bytes(R"({"t":{"dtype":"F32","shape":[0]}})"), "missing field 'data_offsets'"},
      {"duplicate_field", safetensors_bytes(R"({"t":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}})"), "field 'dtype' appears twice"},
      {"duplicate_tensor", one(ok_t + "," + ok_t, f32x4), "tensor 't': name appears twice"},
      {"nul_in_name", safetensors_bytes(R"({"a\u0000b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})"), "NUL"},
      // dtype
      {"unknown_dtype", one(R"("t":{"dtype":"F128","shape":[2,2],"data_offsets":[0,16]})", f32x4), "unknown dtype 'F128'"},
      {"lowercase_dtype", one(R"("t":{"dtype":"f32","shape":[2,2],"data_offsets":[0,16]})", f32x4), "unknown dtype 'f32'"},
      {"dtype_not_string", one(R"("t":{"dtype":32,"shape":[2,2],"data_offsets":[0,16]})", f32x4), "dtype must be a string, found non-negative integer"},
      // shape
      {"negative_dim", one(R"("t":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]})", f32x4), "shape entries must be non-negative integers, found -2"},
      {"float_dim", one(R"("t":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]})", f32x4), "shape entries must be non-negative integers, found 2.0"},
      {"string_dim", one(R"("t":{"dtype":"F32","shape":["2",2],"data_offsets":[0,16]})", f32x4), "found string"},
      {"nested_dim", one(R"("t":{"dtype":"F32","shape":[[2],2],"data_offsets":[0,16]})", f32x4), "found array"},
      {"shape_not_array", one(R"("t":{"dtype":"F32","shape":4,"data_offsets":[0,16]})", f32x4), "shape must be an array"},
      {"dim_over_int64", one(R"("t":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,16]})", f32x4), "larger than 2^63 - 1"},
      {"dim_over_uint64", one(R"("t":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,16]})", f32x4), "non-negative integers, found"},
      {"numel_overflow", one(R"("t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]})", f32x4), "overflows a 64-bit byte count"},
      {"bytes_overflow", one(R"("t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]})", f32x4), "overflows a 64-bit byte count"},
      {"sub_byte_count", one(R"("t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]})", "ab"), "not a whole number of bytes"},
      // data_offsets
      {"offsets_one_entry", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[16]})", f32x4), "exactly 2 entries, found 1"},
      {"offsets_three_entries", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16,16]})", f32x4), "exactly 2 entries, found more"},
      {"offsets_negative", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[-1,16]})", f32x4), "non-negative integers"},
      {"offsets_not_array", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":"0-16"})", f32x4), "data_offsets must be an array"},
      {"size_mismatch", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]})", f32x4.substr(0, 12)), "hold 12 bytes but shape [2, 2] x F32 needs 16"},
      {"end_before_begin", one(R"("t":{"dtype":"F32","shape":[0],"data_offsets":[8,4]})", std::string(8, 'x')), "end before they begin"},
      {"truncated_data", one(ok_t, f32x4.substr(0, 10)), "run past the data area"},
      {"trailing_bytes", one(ok_t, f32x4 + "PK\x03\x04"), "trailing bytes are not allowed"},
      {"gap_at_start", one(R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]})", std::string(20, 'x')), "bytes [0, 4) before it belong to no tensor"},
      {"gap_between", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", std::string(12, 'x')), "belong to no tensor"},
      {"overlap", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, 'x')), "overlap tensor 'a'"},
      {"aliased", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x')), "overlap"},
      // __metadata__
      {"metadata_array", safetensors_bytes(R"({"__metadata__":["a"]})"), "__metadata__ must be an object of strings, found array"},
      {"metadata_number_value", safetensors_bytes(R"({"__metadata__":{"a":1}})"), "__metadata__: value of 'a' must be a string, found non-negative integer"},
      {"metadata_nested", safetensors_bytes(R"({"__metadata__":{"a":{"b":"c"}}})"), "must be a string, found object"},
      {"metadata_null_value", safetensors_bytes(R"({"__metadata__":{"a":null}})"), "must be a string, found null"},
      {"metadata_duplicate_key", safetensors_bytes(R"({"__metadata__":{"a":"1","a":"2"}})"), "__metadata__: key 'a' appears twice"},
      {"metadata_twice", safetensors_bytes(R"({"__metadata__":{},"__metadata__":{}})"), "__metadata__ appears twice"},
      // other formats, recognised by content
      {"pickle", std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14) + "more", "pickle"},
      {"torch_zip", std::string("PK\x03\x04", 4) + std::string(26, '\0') + "archive/data.pklxxxx", "torch.save archive"},
      {"torchscript", std::string("PK\x03\x04", 4) + std::string(26, '\0') + "archive/constants.pkl", "TorchScript"},
      {"numpy", std::string("\x93NUMPY\x01\x00\x76\x00", 10) + "{'descr': '<f4'}", "NumPy"},
      // valid borderline files (expected empty)
      {"valid_empty_header", safetensors_bytes("{}"), ""},
      {"valid_space_padded", safetensors_bytes("{}      "), ""},
      {"valid_leading_whitespace", safetensors_bytes(" \t\n{}"), ""},
      {"valid_metadata_null", safetensors_bytes(R"({"__metadata__":null})"), ""},
      {"valid_zero_sized", one(R"("z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]})", ""), ""},
      {"valid_scalar", one(R"("s":{"dtype":"F32","shape":[],"data_offsets":[0,4]})", "abcd"), ""},
      {"valid_unknown_field_ignored", one(R"("t":{"dtype":"F32","shape":[2,2],"extra":{"a":[1,{"b":2}]},"data_offsets":[0,16]})", f32x4), ""},
      {"valid_zero_sized_between", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"e":{"dtype":"I64","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 'x')), ""},
  };
  // clang-format on
}

}  // namespace recast::testing
