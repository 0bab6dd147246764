#include "io/mapped_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "io/safetensors.h"
#include "io_test_util.h"

namespace mixtral {
namespace {

using testing::FailsWith;
using testing::ScratchDir;

TEST(MappedFile, MapsTheFileContents) {
  ScratchDir dir;
  const std::string path = dir.file("a.bin");
  testing::write_bytes(path, {1, 2, 3, 250});
  auto f = MappedFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_EQ(f->size(), 4u);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->data()[0], 1);
  EXPECT_EQ(f->data()[3], 250);

  MappedFile moved = std::move(*f);
  EXPECT_EQ(moved.size(), 4u);
  EXPECT_EQ(moved.data()[2], 3);
  EXPECT_EQ(f->data(), nullptr);
  EXPECT_EQ(f->size(), 0u);
}

// Pages in this process's page tables (/proc/self/statm's resident field).
size_t resident_pages() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  size_t size = 0, resident = 0;
  if (f != nullptr) {
    EXPECT_EQ(std::fscanf(f, "%zu %zu", &size, &resident), 2);
    std::fclose(f);
  }
  return resident;
}

// Released pages leave this process's mapping (its resident pages drop) and read back unchanged from the
// file; ranges partly or wholly outside the mapping are clipped or ignored.
TEST(MappedFile, ReleasedPagesLeaveAndReadBackUnchanged) {
  ScratchDir dir;
  const std::string path = dir.file("big.bin");
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE)), n = 512 * page;
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + i / 251);
  testing::write_bytes(path, bytes);
  auto f = MappedFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i += page) sum += f->data()[i];  // fault every page in
  EXPECT_GT(sum, 0u);
  const size_t before = resident_pages();
  f->release(f->data() + page / 2, 400 * page);  // whole pages 1..399 inside
  f->release(f->data() - page, 2 * page);        // clipped to page 0 (half of it lies before the mapping)
  f->release(f->data() + n, page);               // wholly outside: ignored
  EXPECT_GE(before, resident_pages() + 300) << "the released pages must leave the page tables";
  EXPECT_EQ(0, std::memcmp(f->data(), bytes.data(), n)) << "released pages must read back from the file";
}

TEST(MappedFile, EmptyFileMapsToNothing) {
  ScratchDir dir;
  const std::string path = dir.file("empty.bin");
  testing::write_bytes(path, {});
  auto f = MappedFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->size(), 0u);
  EXPECT_EQ(f->data(), nullptr);
}

TEST(MappedFile, MissingFileIsAnIoErrorNamingThePath) {
  ScratchDir dir;
  const std::string path = dir.file("model.gguf");
  auto f = MappedFile::open(path);
  EXPECT_TRUE(FailsWith(f, {path + ": cannot open: No such file or directory"}));
  EXPECT_EQ(f.error().kind, ErrorKind::kIo);
  EXPECT_EQ(f.error().exit_code(), 1);
}

TEST(MappedFile, DirectoryIsRefused) {
  ScratchDir dir;
  const std::string path = dir.file("sub");
  ASSERT_TRUE(std::filesystem::create_directory(path));
  auto f = MappedFile::open(path);
  EXPECT_TRUE(FailsWith(f, {path + ": is a directory"}));
  EXPECT_EQ(f.error().kind, ErrorKind::kIo);
}

TEST(MappedFile, UnreadableFileIsRefused) {
  ScratchDir dir;
  const std::string path = dir.file("secret.bin");
  testing::write_bytes(path, {1});
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  auto refused = [&] {
    auto f = MappedFile::open(path);
    return !f.ok() && f.error().kind == ErrorKind::kIo &&
           f.error().message == path + ": cannot open: Permission denied";
  };
  if (::geteuid() != 0) {
    EXPECT_TRUE(refused());
    return;
  }
  // Root reads files whatever their mode: check as an unprivileged user in a child process.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    ::_exit(refused() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "exit 1: wrong or no error, exit 2: could not drop privileges";
}

TEST(OutputMapping, WritesThroughTheMapping) {
  ScratchDir dir;
  const std::string path = dir.file("out.bin");
  {
    auto m = OutputMapping::create(path, 5000);
    ASSERT_TRUE(m.ok()) << m.error().message;
    ASSERT_EQ(m->size(), 5000u);
    for (size_t i = 0; i < 5000; ++i) m->data()[i] = static_cast<uint8_t>(i * 7);
    OutputMapping moved = std::move(*m);
    ASSERT_TRUE(moved.close().ok());
    EXPECT_EQ(moved.data(), nullptr);
    EXPECT_TRUE(moved.close().ok());  // closing twice is harmless
  }
  const auto bytes = testing::read_bytes(path);
  ASSERT_EQ(bytes.size(), 5000u);
  for (size_t i = 0; i < 5000; ++i) ASSERT_EQ(bytes[i], static_cast<uint8_t>(i * 7)) << i;
}

TEST(OutputMapping, DestructorFlushesAndTruncatesOldContents) {
  ScratchDir dir;
  const std::string path = dir.file("out.bin");
  testing::write_bytes(path, std::vector<uint8_t>(100, 0xff));
  {
    auto m = OutputMapping::create(path, 10);
    ASSERT_TRUE(m.ok());
    m->data()[9] = 42;
  }
  const auto bytes = testing::read_bytes(path);
  ASSERT_EQ(bytes.size(), 10u);
  EXPECT_EQ(bytes[0], 0);  // fresh zeros, not the old 0xff
  EXPECT_EQ(bytes[9], 42);
}

TEST(OutputMapping, ZeroSizeCreatesAnEmptyFile) {
  ScratchDir dir;
  const std::string path = dir.file("zero.bin");
  auto m = OutputMapping::create(path, 0);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(m->close().ok());
  EXPECT_EQ(std::filesystem::file_size(path), 0u);
}

TEST(OutputMapping, MissingDirectoryIsAnIoError) {
  ScratchDir dir;
  const std::string path = dir.file("no/such/dir/out.bin");
  auto m = OutputMapping::create(path, 16);
  EXPECT_TRUE(FailsWith(m, {path + ": cannot create: No such file or directory"}));
  EXPECT_EQ(m.error().kind, ErrorKind::kIo);
}

TEST(WriteFileInPlace, RenamesOnlyWhenComplete) {
  ScratchDir dir;
  const std::string path = dir.file("w.bin");
  bool saw_tmp = false;
  ASSERT_TRUE(write_file_in_place(path, 3, [&](uint8_t* dst) {
                saw_tmp = std::filesystem::exists(path + ".tmp") && !std::filesystem::exists(path);
                dst[0] = 'a';
                dst[1] = 'b';
                dst[2] = 'c';
              }).ok());
  EXPECT_TRUE(saw_tmp);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(testing::read_bytes(path), (std::vector<uint8_t>{'a', 'b', 'c'}));
}

TEST(WriteFileInPlace, FailureNamesThePath) {
  ScratchDir dir;
  const std::string path = dir.file("missing/w.bin");
  EXPECT_TRUE(FailsWith(write_file_in_place(path, 3, [](uint8_t*) {}), {path + ".tmp: cannot create"}));
}

TEST(ReadTextFile, ReadsWholeFile) {
  ScratchDir dir;
  const std::string path = dir.file("config.json");
  const std::string text = "{\"hidden_size\": 4096}\n";
  testing::write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
  auto r = read_text_file(path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, text);

  testing::write_bytes(dir.file("empty.json"), {});
  auto e = read_text_file(dir.file("empty.json"));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(*e, "");
}

TEST(ReadTextFile, ErrorsNameThePath) {
  ScratchDir dir;
  EXPECT_TRUE(FailsWith(read_text_file(dir.file("params.json")), {"params.json: cannot open"}));
  std::filesystem::create_directory(dir.file("d"));
  EXPECT_TRUE(FailsWith(read_text_file(dir.file("d")), {"d: is a directory"}));
}

}  // namespace
}  // namespace mixtral
