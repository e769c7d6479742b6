#include "recast/io/file.h"

#include "recast/core/error.h"
#include "recast/core/log.h"

#include <sys/file.h>
#include <csignal>

#include <fcntl.h>
#include <algorithm>
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

void MappedFile::release(size_t offset, size_t length) {
  if (data_ == nullptr || offset >= size_) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t end = std::min(size_, offset + length);
  const size_t first = (offset + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(data_ + first, last - first, MADV_DONTNEED);
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
  remove_orphaned_temps(parent_dir(path_), p.filename().string());
  temp_path_ = temp_beside(path_) + "-XXXXXX";
  fd_ = ::mkstemp(temp_path_.data());
  if (fd_ < 0) {
    throw Error(msg(path_, ": cannot create a temporary file beside it (", errno_text(), ")"));
  }
  guard_.reset(temp_path_);
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
  guard_.release();
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

std::string temp_beside(const std::string& path) {
  std::filesystem::path p(path);
  if (p.filename().empty()) p = p.parent_path();  // "out/"
  return (p.parent_path() / msg(".", p.filename().string(), ".tmp-", ::getpid())).string();
}

namespace {
bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }
}  // namespace

void remove_orphaned_temps(const std::string& dir, const std::string& name) {
  const std::string prefix = "." + name + ".tmp-";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string entry = e.path().filename().string();
    if (entry.rfind(prefix, 0) != 0) continue;
    const char* digits = entry.c_str() + prefix.size();
    char* end = nullptr;
    const long pid = std::strtol(digits, &end, 10);
    if (end == digits || (*end != '\0' && *end != '-')) continue;
    if (pid == ::getpid() || process_alive(pid)) continue;
    std::error_code rm;
    std::filesystem::remove_all(e.path(), rm);
    if (!rm) log::info("removed ", e.path().string(), ", left by process ", pid, " (gone)");
  }
}

namespace {

// The pid a lock file names ("" when it names none).
std::string lock_owner(const std::string& path) {
  std::string owner = read_prefix(path, 32);
  while (!owner.empty() && (owner.back() == '\n' || owner.back() == ' ')) owner.pop_back();
  return owner;
}

}  // namespace

OutputLock::OutputLock(const std::string& out, const std::string& option) {
  std::filesystem::path p(out);
  if (p.filename().empty()) p = p.parent_path();
  const std::string dir = parent_dir(p.string());
  if (!is_directory(dir)) {
    throw Error(msg(option, " ", quote(out), ": the directory ", quote(dir), " does not exist"));
  }
  path_ = (std::filesystem::path(dir) / ("." + p.filename().string() + ".lock")).string();
  // The lock file may be removed by its owner between our open and our flock:
  // then we hold a lock on a name nobody sees, so check and retry.
  for (int attempt = 0; attempt < 100; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) throw Error(msg(option, " ", quote(out), ": cannot create the lock ", path_, " (", errno_text(), ")"));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string owner = lock_owner(path_);
      ::close(fd_);
      fd_ = -1;
      if (err != EWOULDBLOCK) throw Error(msg(path_, ": cannot lock (", std::strerror(err), ")"));
      throw Error(msg(option, " ", quote(out), " is in use by another recast (pid ",
                      owner.empty() ? "unknown" : owner, ", lock ", path_,
                      "); wait for it to finish or choose another ", option));
    }
    struct stat held {}, named {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev) {
      break;
    }
    ::close(fd_);
    fd_ = -1;
  }
  if (fd_ < 0) throw Error(msg(path_, ": cannot take the lock (it keeps disappearing)"));
  const std::string previous = lock_owner(path_);
  if (!previous.empty()) {
    log::warn(option, " ", quote(out), ": taking over the lock left by pid ", previous,
              " (no longer running)");
  }
  guard_.reset(path_);
  const std::string pid = msg(::getpid(), "\n");
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    ::close(fd_);
    throw Error(msg(path_, ": cannot write the lock (", errno_text(), ")"));
  }
}

OutputLock::~OutputLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
}

std::string path_problem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    struct stat link {};
    if (err == ENOENT && ::lstat(path.c_str(), &link) == 0) return "is a dangling symlink";
    if (err == ENOENT) return "does not exist";
    if (err == ELOOP) return "is a symlink loop";
    if (err == ENOTDIR) return "does not exist (a part of the path is not a directory)";
    return msg("cannot be read (", std::strerror(err), ")");
  }
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return "";
  const char* what = S_ISFIFO(st.st_mode)   ? "a FIFO"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                                            : "a special file";
  return msg("is ", what, ", not a regular file or directory");
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
