// Grouped products (the MoE experts of the prefill: cuda/matmul.h grouped mode,
// cuda/expert_matmul.h): each group's assignments are cut into tiles of BN, and the
// blocks of a launch take the tiles of all groups in group order.
#pragma once

namespace ds4::cuda_detail {

// Finds which group and which of its BN-assignment tiles block tile `tile` is, from
// p.group_offsets[0..p.n_groups] (device memory). The whole block of kThreads threads
// calls it; s_scan holds kThreads ints of shared memory. Sets *s_group = -1 when the
// tile lies past every group's tiles.
template <int kThreads, int BN, typename Params>
__device__ void find_group_tile(const Params& p, int tile, int* s_scan, int* s_group, int* s_tile) {
  if (threadIdx.x == 0) *s_group = -1;
  int carry = 0;
  for (int base = 0; base < p.n_groups; base += kThreads) {
    const int g = base + static_cast<int>(threadIdx.x);
    const int count = g < p.n_groups ? (p.group_offsets[g + 1] - p.group_offsets[g] + BN - 1) / BN : 0;
    s_scan[threadIdx.x] = count;
    __syncthreads();
    for (int off = 1; off < kThreads; off *= 2) {
      const int v = threadIdx.x >= off ? s_scan[threadIdx.x - off] : 0;
      __syncthreads();
      s_scan[threadIdx.x] += v;
      __syncthreads();
    }
    const int inclusive = s_scan[threadIdx.x] + carry;
    const int exclusive = inclusive - count;
    if (count > 0 && tile >= exclusive && tile < inclusive) {
      *s_group = g;
      *s_tile = tile - exclusive;
    }
    carry += s_scan[kThreads - 1];
    __syncthreads();
  }
  __syncthreads();
}

}  // namespace ds4::cuda_detail
