// (filled in this session)
#include <gtest/gtest.h>
