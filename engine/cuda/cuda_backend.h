// The CUDA backend: the DeepSeek V4 Flash forward pass (spec/MODEL.md §2) on an
// NVIDIA GPU. Weights are uploaded once at creation; each sequence's state (raw KV
// window, compressor frontiers, compressed and indexer rows) lives in GPU memory.
//
// Built only when the build has CUDA (DS4_HAVE_CUDA); make_backend() calls this
// for BackendKind::kCuda.
//
// Thread-safety: the returned Backend is used by one thread at a time.
#pragma once

#include <memory>

#include "common/status.h"
#include "runtime/backend.h"

namespace ds4 {

class Model;

// Fails with a message naming the cause (no device, out of memory, unsupported
// tensor type) when the backend cannot be created.
Result<std::unique_ptr<Backend>> make_cuda_backend(const Model& model,
                                                   const BackendOptions& options);

class DeviceModel;

// A backend over weights already in GPU memory (synthetic full-size runs).
Result<std::unique_ptr<Backend>> make_cuda_backend_from_device(std::unique_ptr<DeviceModel> model,
                                                               const BackendOptions& options);

// True when the CUDA runtime sees at least one device.
bool cuda_device_present();

}  // namespace ds4
