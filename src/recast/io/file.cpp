#include "recast/io/file.h"

#include "recast/core/error.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>

#include <filesystem>

namespace recast::io {
namespace {

std::string errno_text() {
  return std::strerror(errno);
}

std::string parent_dir(const std::string& path) {
  auto parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(msg(path, ": cannot open (", errno_text(), ")"));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(msg(path, ": cannot stat (", errno_text(), ")"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(msg(path, ": not a regular file"));
  }
  auto size = static_cast<size_t>(st.st_size);
  uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw Error(msg(path, ": cannot map (", errno_text(), ")"));
    }
    data = static_cast<uint8_t*>(p);
  }
  ::close(fd);
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  std::filesystem::path p(path_);
  // Renaming over a device, pipe or directory would replace it (as root, even
  // /dev/null): only regular files (or nothing) may be replaced.
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
    throw Error(msg(path_, ": exists and is not a regular file; refusing to replace it"));
  }
  temp_path_ = (p.parent_path() / ("." + p.filename().string() + ".tmp-XXXXXX")).string();
  fd_ = ::mkstemp(temp_path_.data());
  if (fd_ < 0) {
    throw Error(msg(path_, ": cannot create a temporary file beside it (", errno_text(), ")"));
  }
  ::fchmod(fd_, 0644);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(msg(path_, ": write failed (", errno_text(), ")"));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw Error(msg(path_, ": fsync failed (", errno_text(), ")"));
  if (::close(fd_) != 0) {
    fd_ = -1;
    throw Error(msg(path_, ": close failed (", errno_text(), ")"));
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    throw Error(msg(path_, ": cannot rename the temporary file into place (", errno_text(), ")"));
  }
  committed_ = true;
  sync_directory(parent_dir(path_));
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile file(path);
  file.write(contents.data(), contents.size());
  file.commit();
}

void sync_directory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error(msg(dir, ": cannot open directory (", errno_text(), ")"));
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0 && errno != EINVAL) {
    throw Error(msg(dir, ": directory fsync failed (", errno_text(), ")"));
  }
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_prefix(const std::string& path, size_t n) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(msg(path, ": cannot open (", errno_text(), ")"));
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, out.data() + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

}  // namespace recast::io
