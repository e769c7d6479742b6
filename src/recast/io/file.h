#pragma once

// Files: read-only memory maps, and atomic writes (temp file in the same
// directory, fsync, rename, fsync the directory), so that a crash or a full disk
// never leaves a half-written file under the final name.

#include "recast/core/signals.h"

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
  // Drops the resident pages wholly inside [offset, offset + length) (a
  // tensor copied out and not used in place); they are read again from the
  // file if touched later. Private changes to them are discarded.
  void release(size_t offset, size_t length);

 private:
  MappedFile(std::string path, uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class AtomicFile {
 public:
  // Creates ".<name>.tmp-<pid>-XXXXXX" beside `path`, after removing the temps
  // of earlier processes that are gone (kill -9); a SIGINT / SIGTERM removes it
  // (core/signals.h).
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
  signals::TempPath guard_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes a whole file atomically.
void write_file_atomic(const std::string& path, const std::string& contents);

// Removes the entries of `dir` named ".<name>.tmp-<pid>..." (the temporaries
// of AtomicFile and of directory writers) whose process <pid> no longer runs.
void remove_orphaned_temps(const std::string& dir, const std::string& name);
// The hidden temporary beside `path` for a directory written whole and renamed
// into place: ".<name>.tmp-<pid>".
std::string temp_beside(const std::string& path);

// An advisory lock (flock) on an output directory, held for the run: the file
// ".<name>.lock" beside it holds the owner's pid. A second writer is refused
// (recast::Error naming the pid); a lock left by a process that is gone is
// taken over with a warning. Removed on destruction.
class OutputLock {
 public:
  // `option` names the option in messages ("--out").
  OutputLock(const std::string& out, const std::string& option);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
  signals::TempPath guard_;  // a signal's exit removes the lock file too
};

// Empty when `path` is a regular file or a directory (following symlinks),
// else why not: "does not exist", "is a FIFO, not a regular file or directory",
// "is a dangling symlink", "is a symlink loop", ...
std::string path_problem(const std::string& path);

bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);  // follows symlinks
// Reads up to n bytes from the start of a file (fewer if it is shorter).
std::string read_prefix(const std::string& path, size_t n);
// Fsyncs a directory so that a rename inside it is durable.
void sync_directory(const std::string& dir);

}  // namespace recast::io
