#include "core/result.h"

#include <gtest/gtest.h>

namespace mixtral {
namespace {

Result<int> half(int x) {
  if (x % 2) return Error::data("odd: " + std::to_string(x));
  return x / 2;
}

Result<int> quarter(int x) {
  MX_ASSIGN_OR_RETURN(int h, half(x));
  MX_ASSIGN_OR_RETURN(int q, half(h));
  return q;
}

Status check_even(int x) {
  MX_TRY_STATUS(half(x));
  return {};
}

TEST(Result, PropagatesValuesAndErrors) {
  EXPECT_EQ(*quarter(12), 3);
  auto r = quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "odd: 3");
  EXPECT_EQ(r.error().exit_code(), 1);
  EXPECT_TRUE(check_even(4).ok());
  EXPECT_EQ(check_even(5).error().message, "odd: 5");
  EXPECT_EQ(Error::usage("x").exit_code(), 2);
}

}  // namespace
}  // namespace mixtral
