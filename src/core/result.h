#pragma once

#include "core/check.h"
#include "mixtral/result.h"  // Error, Result<T>, Status, MX_TRY_STATUS, MX_ASSIGN_OR_RETURN
