// The part of CUDA's cooperative groups a custom kernel's block can use in the emulator: the
// block itself (this_thread_block: its sync is __syncthreads) and a thread's rank in the grid.
// Grid-wide synchronisation (a cooperative launch) is not emulated.
#pragma once
#include "cuda_emu.h"

namespace cooperative_groups {

struct thread_block {
  void sync(int line = __builtin_LINE()) const { __syncthreads(line); }
  unsigned int thread_rank() const { return ::emu::rt::current->lid; }
  unsigned int size() const { return ::emu::rt::group->n; }
  unsigned int num_threads() const { return size(); }
  dim3 group_index() const { return blockIdx; }
  dim3 thread_index() const { return threadIdx; }
  dim3 group_dim() const { return blockDim; }
  dim3 dim_threads() const { return blockDim; }
};
inline thread_block this_thread_block() { return thread_block(); }
inline void sync(const thread_block& b, int line = __builtin_LINE()) { b.sync(line); }

struct grid_group {
  unsigned long long thread_rank() const {
    const ::emu::rt::Group* g = ::emu::rt::group;
    const unsigned long long block = g->pos[0] + (unsigned long long)g->count[0] * (g->pos[1] + g->count[1] * g->pos[2]);
    return block * g->n + ::emu::rt::current->lid;
  }
  unsigned long long size() const {
    const ::emu::rt::Group* g = ::emu::rt::group;
    return (unsigned long long)g->n * g->count[0] * g->count[1] * g->count[2];
  }
  unsigned long long num_threads() const { return size(); }
};
inline grid_group this_grid() { return grid_group(); }

}  // namespace cooperative_groups
