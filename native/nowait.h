#pragma once
#include <node_api.h>

void register_nowait(napi_env env, napi_value exports);
