// The emulator's execution model: what the kernel-side headers (emu.h and a front end's) and the
// runtime (runtime.cpp) share. Python fills `Launch` and `Buffer` through ctypes
// (mlxtriton/runtime/emulator mirrors these layouts); everything else is internal to one
// compiled kernel library.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace emu {
namespace rt {

// One kernel argument: an input, an output, or a shape / strides / ndim parameter.
struct Buffer {
  char* data;
  int64_t nbytes;
  int64_t elem_size;   // bytes of one element of the array's dtype
  int32_t writable;    // an output
  int32_t initialised; // an output MLX filled with init_value before the launch
  const char* name;
  int32_t* writer;     // outputs, per element: 1 + the linear id of the thread that wrote it,
                       // or one of the marks below (set up by the runtime)
};

// Writer marks besides thread ids (zero, so that untouched pages of a large output cost nothing).
constexpr int32_t kUnwritten = 0, kInitialised = -1, kAtomic = -2;

// How a launch's grid becomes threadgroups (runtime.cpp `run`).
enum Model : int32_t {
  kMetal = 0,  // dispatchThreads: edge threadgroups cut to the grid
  kCuda = 1,   // MLX's cuda_kernel: whole blocks, threads past the grid's end included
};

struct Launch {
  uint32_t grid[3];        // threads, as mx.fast.metal_kernel / cuda_kernel count them
  uint32_t threadgroup[3]; // requested threadgroup (block) size
  int32_t n_buffers;
  int32_t check_unwritten; // every output element must be written (no init_value)
  Buffer* buffers;
  const int64_t* groups;   // linear ids of the threadgroups to run, or null for all
  int64_t n_groups;
  int32_t model;           // Model
  int32_t max_threads;     // the kernel's declared bound on threads per group (0: none)
  int64_t dynamic_shared;  // bytes of dynamic shared memory (CUDA's extern __shared__)
  int32_t error_line;      // line of the wrapped source the first error points at (0: none)
  char error[2048];
};

// The front end's names for what messages mention.
struct Words {
  const char* group;    // "threadgroup" / "block"
  const char* memory;   // "threadgroup memory" / "shared memory"
  const char* barrier;  // "threadgroup_barrier" / "__syncthreads"
  const char* simd;     // "SIMD-group" / "warp"
  const char* exited;   // what a lane that left the kernel did: "returned" / "exited"
};

struct Thread;
// A SIMD-group operation, run by the scheduler once every active lane has arrived: ``lanes``
// holds the group's 32 lanes, null where a lane does not exist or has returned.
typedef void (*SimdFn)(Thread* const* lanes, int line);
typedef void (*Entry)(Thread* t, Buffer* buffers);

enum State { kReady, kAtBarrier, kAtSimd, kDone };

struct Thread {
  uint32_t lid;        // thread_index_in_threadgroup (the linear thread index in the block)
  uint32_t simd;       // simdgroup_index_in_threadgroup (warp)
  int64_t gid;         // linear index among the launch's threads
  uint32_t pos_tg[3], pos_grid[3];
  int32_t state;
  // the pending barrier or SIMD-group operation
  int32_t line;
  int32_t flags;
  uint32_t arg;        // its argument (a shuffle's lane, offset or mask)
  uint32_t mask;       // CUDA: the lanes named by a *_sync operation
  int32_t width;       // CUDA: a shuffle's segment width
  SimdFn fn;
  const char* what;
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
  void* sp;            // saved stack pointer of the thread's fiber
  void* stack;
};

// The running threadgroup.
struct Group {
  uint32_t pos[3];          // threadgroup_position_in_grid (blockIdx)
  uint32_t size[3];         // threads_per_threadgroup (Metal: smaller at the grid's edges)
  uint32_t dispatch[3];     // dispatch_threads_per_threadgroup (blockDim)
  uint32_t count[3];        // threadgroups_per_grid (gridDim)
  uint32_t n;               // threads in this threadgroup
  uint32_t phase;           // threadgroup barriers with mem_threadgroup passed so far
  uint32_t simd_phase[32];  // per simdgroup: simdgroup barriers with mem_threadgroup
  Thread* threads;
};

// Per element (dynamic shared memory: per byte) of threadgroup memory: who wrote and read it
// last, and in which barrier phase.
struct Shadow {
  int16_t writer, reader;    // thread_index_in_threadgroup; -1 none, -2 several readers
  uint16_t wsimd, rsimd;     // the simdgroup's barrier count at that access
  uint32_t wphase, rphase;
};

constexpr int kMemThreadgroup = 2;  // the barrier flag that orders threadgroup memory

extern Thread* current;
extern Group* group;
extern Launch* launch;
extern const Words* words;

[[noreturn]] void fail(int line, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(int line, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void wait(Thread* t, int state);  // back to the scheduler until released
void barrier(int flags, int line, int simd_only, const char* what);
char* tg_alloc(int line, const char* name, size_t bytes, size_t count, Shadow** shadow);
// The launch's dynamic shared memory (``*bytes`` of it, shadowed per byte).
char* dynamic_alloc(int line, const char* name, size_t* bytes, Shadow** shadow);
int run(Launch* L, Entry entry);

}  // namespace rt
}  // namespace emu
