// DeviceLimits: the properties of the current GPU that select kernel variants. The
// H200 (sm_90) gives a block up to 227 KiB of shared memory; the GB10 (sm_121), like
// the other 12.x parts, about 99 KiB, so every launcher that asks for more than 48 KiB
// checks max_shared_per_block() and falls back to a variant that fits.
//
// DS4_CUDA_MAX_SHARED_PER_BLOCK=<bytes> lowers the limit (never raises it): on a large
// GPU it makes the launchers choose the variants a smaller one would run, so the GB10
// paths are tested on the H200.
//
// Thread-safety: values are read once per process and then immutable.
#pragma once

namespace ds4 {

// Dynamic shared memory one block may opt into on the current device, in bytes.
int max_shared_per_block();

}  // namespace ds4
