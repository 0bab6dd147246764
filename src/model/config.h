#pragma once

#include "mixtral/config.h"  // ModelConfig, RopeLayout
