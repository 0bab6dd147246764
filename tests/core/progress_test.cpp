#include "core/progress.h"

#include <gtest/gtest.h>

namespace mixtral {
namespace {

TEST(Progress, SilentWhenOff) {
  testing::internal::CaptureStderr();
  {
    Progress p("convert", 10, Progress::Mode::kOff);
    for (int i = 0; i < 10; ++i) p.add(1);
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(Progress, DrawsAndFinishesWithNewline) {
  testing::internal::CaptureStderr();
  {
    Progress p("quantize", 4, Progress::Mode::kOn);
    p.set_detail("blk.0.attn_q.weight");
    p.update(2);
    p.update(4);
  }
  const std::string out = testing::internal::GetCapturedStderr();
  EXPECT_NE(out.find("quantize ["), std::string::npos) << out;
  EXPECT_NE(out.find(" 50.0% 2/4"), std::string::npos) << out;
  EXPECT_NE(out.find("100.0% 4/4"), std::string::npos) << out;
  EXPECT_NE(out.find("blk.0.attn_q.weight"), std::string::npos) << out;
  EXPECT_EQ(out.back(), '\n');
}

}  // namespace
}  // namespace mixtral
