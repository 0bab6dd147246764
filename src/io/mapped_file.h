// Read-only memory-mapped file. Weights are used in place from the mapping (zero copy).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "core/result.h"

namespace mixtral {

class MappedFile {
 public:
  // Maps a regular file read-only (MAP_PRIVATE). Errors are Error::io naming the path ("x: cannot open:
  // No such file or directory", "x: is a directory"). An empty file opens with data() null and size() 0.
  static Result<MappedFile> open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Drops this process's mappings of the whole pages inside [p, p + n), for bytes that now live elsewhere
  // (weights repacked at load), so they are not resident twice. The pages stay in the page cache and a
  // later read maps them again; bytes outside the mapping are ignored.
  void release(const void* p, size_t n) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writable mapping of a new file of a fixed size (the writers fill tensors in place, so a
// full-width model is written without holding it in memory).
// Bytes [p, p + n) of a read-only file mapping that this process will never read (another rank's experts):
// the whole pages inside lose MADV_HUGEPAGE, so that no huge page mapped for their neighbours brings them
// in. A hint: nothing fails.
void advise_unread(const void* p, size_t n);

class OutputMapping {
 public:
  // Creates (or truncates) `path`, reserves `size` bytes on disk (so a full disk is an error here, not
  // a SIGBUS later) and maps them read-write, MAP_SHARED.
  static Result<OutputMapping> create(const std::string& path, size_t size);
  OutputMapping() = default;
  OutputMapping(OutputMapping&& o) noexcept;
  OutputMapping& operator=(OutputMapping&& o) noexcept;
  ~OutputMapping();
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }
  Status close();  // msync + munmap; the destructor closes too, silently

 private:
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Creates `path` with `size` bytes that `fill` writes in place through an OutputMapping. The bytes go
// to a temporary file beside it ("<path>.tmp") that is synced and then renamed, so an interrupted
// write never leaves a partial file under the final name.
Status write_file_in_place(const std::string& path, size_t size,
                           const std::function<void(uint8_t* dst)>& fill);

}  // namespace mixtral
