// env.h: the project's on/off switches read from the environment (SPEEDRUN_CUDA_VEC8,
// SPEEDRUN_CUDNN_GRAPH, SPEEDRUN_CPU_CONV_LOG, ...), all parsed one way.
// Unset or empty: the switch's default. 1/on/yes/true and 0/off/no/false (any case): on and off.
// Anything else is a user error (sr::Error naming the variable and its value), so that a typo
// such as SPEEDRUN_CUDNN_GRAPH=of does not silently leave the default in place.
// env_count reads a count (SPEEDRUN_CUDA_BN_MIN_CHUNKS, SPEEDRUN_NCCL_TIMEOUT's seconds) the same
// way: unset or empty gives the default; otherwise decimal digits only, least (1 unless said) to
// 2^31 - 1, else the same error.
#pragma once

namespace sr {

bool env_switch(const char* name, bool fallback);
int env_count(const char* name, int fallback, int least = 1);

}  // namespace sr
