// A kernel timeline of any CUDA program, graph-launched kernels included, for finding
// where a decode token's time goes (which kernels wait, which run side by side).
//
// Built as a shared library (target ds4_kernel_timeline, when CMake finds CUPTI) and
// loaded by the CUDA driver through its injection hook:
//   CUDA_INJECTION64_PATH=build/tools/cuda_timeline/libds4_kernel_timeline.so DS4_TIMELINE_OUT=t.csv \
//     build/bin/ds4-bench --synthetic full --pp 8 --tg 4 --depth 0 --runs 1 --no-warmup
// Every kernel becomes a CSV row: start and end (ns, GPU clock), stream, graph node
// (0 outside graphs), grid and block sizes, mangled name. tools/cuda_timeline/timeline.py
// reads the file. The start of a kernel launched with programmatic dependent launch is
// when its first block became resident, which can be long before its dependencies
// finish (it waits in griddepcontrol.wait): read the ends.
//
// Thread-safety: CUPTI calls the buffer callbacks from its own thread; writes are
// serialised by a mutex.
#include <cupti.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#ifndef DS4_CUPTI_KERNEL_RECORD
#error "DS4_CUPTI_KERNEL_RECORD must name the newest CUpti_ActivityKernelN of this CUPTI"
#endif

namespace {

using KernelRecord = DS4_CUPTI_KERNEL_RECORD;
constexpr size_t kBufferBytes = 8u << 20;

FILE* g_out = nullptr;
std::mutex g_mutex;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = kBufferBytes;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const auto* k = reinterpret_cast<const KernelRecord*>(record);
    std::fprintf(g_out, "%llu,%llu,%u,%llu,%d,%d,%s\n", static_cast<unsigned long long>(k->start),
                 static_cast<unsigned long long>(k->end), k->streamId,
                 static_cast<unsigned long long>(k->graphNodeId), k->gridX * k->gridY * k->gridZ,
                 k->blockX * k->blockY * k->blockZ, k->name ? k->name : "?");
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0) {
    std::fprintf(stderr, "kernel timeline: %zu records dropped\n", dropped);
  }
  std::free(buffer);
}

void flush_at_exit() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_out != nullptr) std::fclose(g_out);
  g_out = nullptr;
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection(void) {
  const char* path = std::getenv("DS4_TIMELINE_OUT");
  g_out = std::fopen(path != nullptr ? path : "kernel_timeline.csv", "w");
  if (g_out == nullptr) {
    std::fprintf(stderr, "kernel timeline: cannot write %s\n", path != nullptr ? path : "kernel_timeline.csv");
    return 0;
  }
  std::fprintf(g_out, "start,end,stream,node,grid,block,name\n");
  if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel timeline: CUPTI refused kernel activity records\n");
    return 0;
  }
  std::atexit(flush_at_exit);
  return 1;
}
