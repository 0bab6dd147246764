#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

namespace mixtral {
namespace {

Error sys_error(const std::string& path, const std::string& what) {
  return Error::io(path + ": " + what + ": " + std::strerror(errno));
}

// Closes a file descriptor when it goes out of scope (the mappings outlive their descriptors).
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

}  // namespace

Result<MappedFile> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error(path, "cannot open");
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return sys_error(path, "cannot stat");
  if (S_ISDIR(st.st_mode)) return Error::io(path + ": is a directory, expected a file");
  if (!S_ISREG(st.st_mode)) return Error::io(path + ": not a regular file");
  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ == 0) return f;  // mmap refuses empty ranges; callers see size() == 0
  void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) return sys_error(path, "cannot map");
  f.data_ = static_cast<const uint8_t*>(p);
  // Pages this mapping reads in from disk come in 2 MiB folios where the kernel can (one TLB entry each
  // instead of 512); pages already cached keep the folios they have.
  ::madvise(p, f.size_, MADV_HUGEPAGE);
  return f;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    path_ = std::move(o.path_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::release(const void* p, size_t n) const {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = std::max(reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(data_));
  const uintptr_t end =
      std::min(reinterpret_cast<uintptr_t>(p) + n, reinterpret_cast<uintptr_t>(data_) + size_);
  const uintptr_t lo = (begin + page - 1) / page * page, hi = end / page * page;  // whole pages inside
  if (data_ != nullptr && lo < hi) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void advise_unread(const void* p, size_t n) {
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (begin + page - 1) / page * page, hi = (begin + n) / page * page;
  if (lo < hi) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_NOHUGEPAGE);
}

Result<OutputMapping> OutputMapping::create(const std::string& path, size_t size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sys_error(path, "cannot create");
  FdCloser closer(fd);
  OutputMapping m;
  m.path_ = path;
  m.size_ = size;
  if (size == 0) return m;
  // Reserve the blocks now: running out of space while writing through a shared mapping would
  // raise SIGBUS instead of returning an error.
  const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (rc == EOPNOTSUPP || rc == EINVAL) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) return sys_error(path, "cannot resize");
  } else if (rc != 0) {
    errno = rc;
    return sys_error(path, "cannot allocate " + std::to_string(size) + " bytes");
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error(path, "cannot map for writing");
  m.data_ = static_cast<uint8_t*>(p);
  return m;
}

OutputMapping::OutputMapping(OutputMapping&& o) noexcept
    : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

OutputMapping& OutputMapping::operator=(OutputMapping&& o) noexcept {
  if (this != &o) {
    (void)close();
    path_ = std::move(o.path_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

OutputMapping::~OutputMapping() {
  (void)close();
}

Status OutputMapping::close() {
  if (!data_) return {};
  uint8_t* p = std::exchange(data_, nullptr);
  const bool synced = ::msync(p, size_, MS_SYNC) == 0;
  const int sync_errno = errno;
  ::munmap(p, size_);
  if (!synced) {
    errno = sync_errno;
    return sys_error(path_, "cannot write");
  }
  return {};
}

Status write_file_in_place(const std::string& path, size_t size,
                           const std::function<void(uint8_t* dst)>& fill) {
  const std::string tmp = path + ".tmp";
  Status st = [&]() -> Status {
    MX_ASSIGN_OR_RETURN(OutputMapping out, OutputMapping::create(tmp, size));
    fill(out.data());
    return out.close();
  }();
  if (st.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) st = sys_error(path, "cannot rename " + tmp);
  if (!st.ok()) std::remove(tmp.c_str());
  return st;
}

}  // namespace mixtral
