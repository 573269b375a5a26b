#include "cuda/synthetic_full.h"

#include <cstdio>
#include <memory>

#include "cuda/cuda_backend.h"
#include "cuda/device_model.h"

namespace ds4 {

Result<BenchTarget> make_cuda_synthetic_full_target(const BackendOptions& options) {
  if (!cuda_device_present()) return Status::Error("--synthetic full: no CUDA device is present");
  const ModelConfig config = deepseek_v4_flash_config();
  Result<std::unique_ptr<DeviceModel>> model = make_synthetic_model(config, 20261129);
  if (!model.ok()) return model.status().wrap("--synthetic full");
  std::fprintf(stderr, "ds4-bench: synthetic full-size weights: %.2f GiB on the GPU\n",
               (*model)->device_bytes() / (1024.0 * 1024.0 * 1024.0));
  Result<std::unique_ptr<Backend>> backend = make_cuda_backend_from_device(std::move(model.value()), options);
  if (!backend.ok()) return backend.status().wrap("--synthetic full");
  BenchTarget t;
  t.model_name = "synthetic-deepseek-v4-flash-q2";
  t.backend_name = "cuda";
  t.vocab = config.vocab;
  std::shared_ptr<Backend> owner(std::move(backend.value()));
  t.backend = owner.get();
  t.owner = owner;
  return t;
}

}  // namespace ds4
