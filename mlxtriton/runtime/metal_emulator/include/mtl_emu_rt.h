// The Metal emulator's execution model: what the kernel-side headers and the runtime
// (runtime.cpp) share. Python fills `Launch` and `Buffer` through ctypes (metal_emulator
// mirrors these layouts); everything else is internal to one compiled kernel library.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace mtl {
namespace rt {

// One kernel argument: an input, an output, or a shape / strides / ndim parameter.
struct Buffer {
  char* data;
  int64_t nbytes;
  int64_t elem_size;   // bytes of one element of the array's dtype
  int32_t writable;    // an output
  int32_t initialised; // an output MLX filled with init_value before the launch
  const char* name;
  int32_t* writer;     // outputs, per element: 1 + the grid-linear id of the thread that wrote
                       // it, or one of the marks below (set up by the runtime)
};

// Writer marks besides thread ids (zero, so that untouched pages of a large output cost nothing).
constexpr int32_t kUnwritten = 0, kInitialised = -1, kAtomic = -2;

struct Launch {
  uint32_t grid[3];        // threads, as mx.fast.metal_kernel counts them
  uint32_t threadgroup[3]; // requested threadgroup size (MLX clamps it to the grid)
  int32_t n_buffers;
  int32_t check_unwritten; // every output element must be written (no init_value)
  Buffer* buffers;
  const int64_t* groups;   // linear ids of the threadgroups to run, or null for all
  int64_t n_groups;
  int32_t error_line;      // line of the wrapped source the first error points at (0: none)
  char error[2048];
};

struct Thread;
// A SIMD-group operation, run by the scheduler once every active lane has arrived: ``lanes``
// holds the group's 32 lanes, null where a lane does not exist or has returned.
typedef void (*SimdFn)(Thread* const* lanes, int line);
typedef void (*Entry)(Thread* t, Buffer* buffers);

enum State { kReady, kAtBarrier, kAtSimd, kDone };

struct Thread {
  uint32_t lid;        // thread_index_in_threadgroup
  uint32_t simd;       // simdgroup_index_in_threadgroup
  int64_t gid;         // linear index in the grid
  uint32_t pos_tg[3], pos_grid[3];
  int32_t state;
  // the pending barrier or SIMD-group operation
  int32_t line;
  int32_t flags;
  uint32_t arg;
  SimdFn fn;
  const char* what;
  alignas(16) unsigned char in[16];
  alignas(16) unsigned char out[16];
  void* sp;            // saved stack pointer of the thread's fiber
  void* stack;
};

// The running threadgroup.
struct Group {
  uint32_t pos[3];          // threadgroup_position_in_grid
  uint32_t size[3];         // threads_per_threadgroup (smaller at the grid's edges)
  uint32_t dispatch[3];     // dispatch_threads_per_threadgroup
  uint32_t count[3];        // threadgroups_per_grid
  uint32_t n;               // threads in this threadgroup
  uint32_t phase;           // threadgroup barriers with mem_threadgroup passed so far
  uint32_t simd_phase[32];  // per simdgroup: simdgroup barriers with mem_threadgroup
  Thread* threads;
};

// Per element of threadgroup memory: who wrote and read it last, and in which barrier phase.
struct Shadow {
  int16_t writer, reader;    // thread_index_in_threadgroup; -1 none, -2 several readers
  uint16_t wsimd, rsimd;     // the simdgroup's barrier count at that access
  uint32_t wphase, rphase;
};

extern Thread* current;
extern Group* group;
extern Launch* launch;

[[noreturn]] void fail(int line, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(int line, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void wait(Thread* t, int state);  // back to the scheduler until released
void barrier(int flags, int line, int simd_only);
char* tg_alloc(int line, const char* name, size_t bytes, size_t count, Shadow** shadow);
int run(Launch* L, Entry entry);

}  // namespace rt
}  // namespace mtl
