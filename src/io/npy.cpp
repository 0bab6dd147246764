#include "io/npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace mixtral {

Status write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  size_t count = 1;
  for (int64_t d : shape) {
    dims += std::to_string(d) + ", ";
    count *= static_cast<size_t>(d);
  }
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(n, v)"; a 1-d shape keeps "(n, )"
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t prefix = 10;  // magic (6) + version (2) + header length (2)
  header.append(64 - (prefix + header.size() + 1) % 64, ' ');
  header += '\n';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return Error::io(path + ": cannot write: " + std::strerror(errno));
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  bool ok = std::fwrite(magic, 1, 8, f) == 8;
  const unsigned char len[2] = {static_cast<unsigned char>(hlen & 0xff),
                                static_cast<unsigned char>(hlen >> 8)};
  ok = ok && std::fwrite(len, 1, 2, f) == 2;
  ok = ok && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  ok = ok && (count == 0 || std::fwrite(data, sizeof(float), count, f) == count);
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return Error::io(path + ": write failed: " + std::strerror(errno));
  return {};
}

}  // namespace mixtral
