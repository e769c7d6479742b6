#pragma once

// Files: read-only memory maps, and atomic writes (temp file in the same
// directory, fsync, rename, fsync the directory), so that a crash or a full disk
// never leaves a half-written file under the final name.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace recast::io {

class MappedFile {
 public:
  // Maps the whole file. Writes to the mapping are private (copy-on-write) and
  // never reach the file. Throws recast::Error naming `path`.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class AtomicFile {
 public:
  // Creates ".<name>.tmp-XXXXXX" beside `path`.
  explicit AtomicFile(std::string path);
  // Removes the temp file unless commit() succeeded.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  // fsync, rename over `path`, fsync the directory.
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes a whole file atomically.
void write_file_atomic(const std::string& path, const std::string& contents);

bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);  // follows symlinks
// Reads up to n bytes from the start of a file (fewer if it is shorter).
std::string read_prefix(const std::string& path, size_t n);
// Fsyncs a directory so that a rename inside it is durable.
void sync_directory(const std::string& dir);

}  // namespace recast::io
