#include "runtime/backend.h"

#include "cpu/cpu_backend.h"
#include "model/model.h"
#include "runtime/sampler.h"

#ifdef DS4_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace ds4 {

std::string_view backend_kind_name(BackendKind kind) {
  switch (kind) {
    case BackendKind::kCpu: return "cpu";
    case BackendKind::kCuda: return "cuda";
  }
  return "unknown";
}

Result<int32_t> Backend::forward_greedy(const BatchToken& t) {
  BatchToken one = t;
  one.want_logits = true;
  one.want_hidden = false;
  ForwardOutput out;
  DS4_RETURN_IF_ERROR(forward(std::span<const BatchToken>(&one, 1), &out));
  if (out.logits.empty()) return Status::Error(std::string(name()) + " backend: no logits for a greedy step");
  return Sampler::greedy(out.logits);
}

bool cuda_available() {
#ifdef DS4_HAVE_CUDA
  return cuda_device_present();
#else
  return false;
#endif
}

Result<std::unique_ptr<Backend>> make_backend(const Model& model, BackendKind kind, const BackendOptions& options) {
  switch (kind) {
    case BackendKind::kCpu: {
      auto cpu = cpu::CpuBackend::Create(model, options);
      if (!cpu.ok()) return cpu.status();
      return std::unique_ptr<Backend>(std::move(cpu.value()));
    }
    case BackendKind::kCuda: {
#ifdef DS4_HAVE_CUDA
      if (!cuda_device_present()) return Status::Error("cuda backend: no CUDA device is present");
      return make_cuda_backend(model, options);
#else
      return Status::Error("cuda backend: this build has no CUDA backend (configure with -DDS4_CUDA=ON)");
#endif
    }
  }
  return Status::Error("unknown backend kind");
}

}  // namespace ds4
