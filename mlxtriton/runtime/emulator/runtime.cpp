// The emulator's runtime, shared by its front ends: runs one launch as MLX dispatches it, one
// threadgroup (block) at a time, each thread a fiber. Metal (mx.fast.metal_kernel): a grid
// counted in threads, threadgroups clamped to the grid and smaller at its edges. CUDA
// (mx.fast.cuda_kernel): the same grid in whole blocks, threads past its end included. A thread
// runs until it reaches a barrier or a SIMD-group (warp) operation; the scheduler executes a
// SIMD-group operation once every active lane of the SIMD-group is at it, and releases a barrier
// once every thread of the threadgroup is at it. Anything the GPU leaves undefined that the
// schedule can observe fails the launch with a message: divergent barriers and SIMD-group
// operations, shuffles from inactive lanes, and (checked in emu.h) out-of-bounds or misaligned
// device accesses, unwritten or racing threadgroup memory, output elements written twice or
// never.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "emu_rt.h"

#if !defined(__x86_64__) && !defined(__aarch64__)
#include <ucontext.h>
#endif

namespace emu {
namespace rt {

Thread* current = nullptr;
Group* group = nullptr;
Launch* launch = nullptr;
const Words* words = nullptr;

namespace {

constexpr Words kWords[] = {
    {"threadgroup", "threadgroup memory", "threadgroup_barrier", "SIMD-group", "returned"},
    {"block", "shared memory", "__syncthreads", "warp", "exited"},
};
// Per threadgroup on every Apple GPU (apple-gpu.md); per block on every CUDA GPU since sm_20.
constexpr uint32_t kMaxThreads = 1024;
constexpr size_t kThreadgroupMemory = 32768;  // maxThreadgroupMemoryLength, Apple7-Apple10
// CUDA, sm_90 (CUDA C Programming Guide, "Technical Specifications per Compute Capability"):
// static shared memory stops at 48 KB a block; a kernel opted in to more dynamic memory (MLX
// opts in above 48000 bytes) may use up to 227 KB in all.
constexpr size_t kStaticShared = 48 * 1024;
constexpr size_t kOptInShared = 227 * 1024;
constexpr size_t kStack = 256 * 1024;
constexpr uint64_t kCanary = 0x6d746c2d656d7521ull;

Entry g_entry;
bool g_aborted;
char* g_stacks;
size_t g_stacks_bytes;
Thread g_threads[kMaxThreads];
Group g_group;

// -- fibers -----------------------------------------------------------------------------------
#if defined(__APPLE__)
#define MT_SYM(x) "_" #x
#define MT_HIDDEN(x) ".private_extern _" #x "\n"
#else
#define MT_SYM(x) #x
#define MT_HIDDEN(x) ".hidden " #x "\n"
#endif

extern "C" void emu_switch(void** save_sp, void* to_sp);
extern "C" void emu_fiber_start();

#if defined(__x86_64__)
// Saves the callee-saved registers and the SSE / x87 control words on the current stack, stores
// the stack pointer in *save_sp, and resumes the stack at to_sp (System V AMD64 ABI).
__asm__(".text\n"
        ".globl " MT_SYM(emu_switch) "\n" MT_HIDDEN(emu_switch)
        MT_SYM(emu_switch) ":\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".globl " MT_SYM(emu_fiber_start) "\n" MT_HIDDEN(emu_fiber_start)
        MT_SYM(emu_fiber_start) ":\n"
        "  movq %r12, %rdi\n  callq *%r13\n  ud2\n");

void* fiber_init(char* top, void (*fn)(Thread*), Thread* arg) {
  uint64_t* sp = reinterpret_cast<uint64_t*>(top) - 8;
  uint32_t csr[2];
  __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
  memcpy(&sp[0], csr, 8);
  sp[1] = 0;                                    // r15
  sp[2] = 0;                                    // r14
  sp[3] = reinterpret_cast<uint64_t>(fn);       // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);      // r12
  sp[5] = 0;                                    // rbx
  sp[6] = 0;                                    // rbp
  sp[7] = reinterpret_cast<uint64_t>(&emu_fiber_start);
  return sp;
}
#elif defined(__aarch64__)
// AAPCS64: x19-x30 and d8-d15 are callee-saved.
__asm__(".text\n"
        ".globl " MT_SYM(emu_switch) "\n" MT_HIDDEN(emu_switch)
        ".p2align 2\n"
        MT_SYM(emu_switch) ":\n"
        "  sub sp, sp, #176\n"
        "  stp x19, x20, [sp, #0]\n  stp x21, x22, [sp, #16]\n  stp x23, x24, [sp, #32]\n"
        "  stp x25, x26, [sp, #48]\n  stp x27, x28, [sp, #64]\n  stp x29, x30, [sp, #80]\n"
        "  stp d8, d9, [sp, #96]\n  stp d10, d11, [sp, #112]\n  stp d12, d13, [sp, #128]\n"
        "  stp d14, d15, [sp, #144]\n"
        "  mov x9, sp\n  str x9, [x0]\n  mov sp, x1\n"
        "  ldp x19, x20, [sp, #0]\n  ldp x21, x22, [sp, #16]\n  ldp x23, x24, [sp, #32]\n"
        "  ldp x25, x26, [sp, #48]\n  ldp x27, x28, [sp, #64]\n  ldp x29, x30, [sp, #80]\n"
        "  ldp d8, d9, [sp, #96]\n  ldp d10, d11, [sp, #112]\n  ldp d12, d13, [sp, #128]\n"
        "  ldp d14, d15, [sp, #144]\n"
        "  add sp, sp, #176\n  ret\n"
        ".globl " MT_SYM(emu_fiber_start) "\n" MT_HIDDEN(emu_fiber_start)
        ".p2align 2\n"
        MT_SYM(emu_fiber_start) ":\n"
        "  mov x0, x19\n  blr x20\n  brk #0\n");

void* fiber_init(char* top, void (*fn)(Thread*), Thread* arg) {
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 176);
  memset(sp, 0, 176);
  sp[0] = reinterpret_cast<uint64_t>(arg);  // x19
  sp[1] = reinterpret_cast<uint64_t>(fn);   // x20
  sp[11] = reinterpret_cast<uint64_t>(&emu_fiber_start);  // x30
  return sp;
}
#else
// Any other POSIX machine: ucontext (slower: each switch saves the signal mask).
ucontext_t g_scheduler_context;
ucontext_t g_contexts[kMaxThreads];

extern "C" void emu_switch(void** save_sp, void* to_sp) {
  swapcontext(static_cast<ucontext_t*>(*reinterpret_cast<void**>(save_sp)), static_cast<ucontext_t*>(to_sp));
}
#endif

void* g_scheduler_sp;

[[noreturn]] void to_scheduler() {
  void* dead;
  emu_switch(&dead, g_scheduler_sp);
  __builtin_unreachable();
}

void fiber_main(Thread* t) {
  g_entry(t, launch->buffers);
  t->state = kDone;
  to_scheduler();
}

#if !defined(__x86_64__) && !defined(__aarch64__)
void* fiber_init(char* top, void (*fn)(Thread*), Thread* arg) {
  ucontext_t* c = &g_contexts[arg->lid];
  getcontext(c);
  c->uc_stack.ss_sp = top - kStack + 64;
  c->uc_stack.ss_size = kStack - 64;
  c->uc_link = nullptr;
  makecontext(c, reinterpret_cast<void (*)()>(fn), 1, arg);
  return c;
}
#endif

void resume(Thread* t) {
  current = t;
#if defined(__x86_64__) || defined(__aarch64__)
  emu_switch(&g_scheduler_sp, t->sp);
#else
  void* self = &g_scheduler_context;
  g_scheduler_sp = self;
  swapcontext(&g_scheduler_context, static_cast<ucontext_t*>(t->sp));
#endif
  current = nullptr;
}

// -- threadgroup memory: one allocation per declaration, kept for the whole launch ---------------
// (CUDA's dynamic shared memory is one more, per byte, under line 0)
struct TgArray {
  int line;
  const char* name;
  size_t bytes, count;
  char* data;
  Shadow* shadow;
  uint64_t declared_in;  // 1 + index of the last threadgroup that reached the declaration
};
TgArray g_arrays[64];
int g_n_arrays;
uint64_t g_group_serial;

void free_arrays() {
  for (int i = 0; i < g_n_arrays; ++i) {
    free(g_arrays[i].data);
    free(g_arrays[i].shadow);
  }
  g_n_arrays = 0;
}

void thread_name(const Thread* t, char* out, size_t n) {
  snprintf(out, n, "thread (%u,%u,%u) of %s (%u,%u,%u)", t->pos_tg[0], t->pos_tg[1],
           t->pos_tg[2], words->group, g_group.pos[0], g_group.pos[1], g_group.pos[2]);
}

void vreport(int line, const char* fmt, va_list ap, const Thread* t) {
  if (g_aborted) return;  // the first error is the one reported
  g_aborted = true;
  Launch* L = launch;
  int n = vsnprintf(L->error, sizeof L->error, fmt, ap);
  if (t && n >= 0 && size_t(n) < sizeof L->error) {
    char who[128];
    thread_name(t, who, sizeof who);
    snprintf(L->error + n, sizeof L->error - n, " [%s]", who);
  }
  L->error_line = line;
}

}  // namespace

void fail(int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(line, fmt, ap, current);
  va_end(ap);
  if (!current) abort();  // only kernel code (on a fiber) may fail
  to_scheduler();
}

void report(int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(line, fmt, ap, nullptr);
  va_end(ap);
}

void wait(Thread* t, int state) {
  t->state = state;
#if defined(__x86_64__) || defined(__aarch64__)
  emu_switch(&t->sp, g_scheduler_sp);
#else
  swapcontext(static_cast<ucontext_t*>(t->sp), &g_scheduler_context);
#endif
}

namespace {
void simd_barrier(Thread* const* lanes, int line) {
  const Thread* first = nullptr;
  for (int l = 0; l < 32; ++l) {
    if (!lanes[l]) continue;
    if (!first) first = lanes[l];
    if (lanes[l]->flags != first->flags) {
      report(line, "%s: lanes pass different memory flags", first->what);
      return;
    }
  }
  if (first && (first->flags & kMemThreadgroup)) ++g_group.simd_phase[first->simd];
}
}  // namespace

void barrier(int flags, int line, int simd_only, const char* what) {
  Thread* t = current;
  t->line = line;
  t->flags = flags;
  t->what = what;
  if (simd_only) {
    t->fn = simd_barrier;
    wait(t, kAtSimd);
  } else {
    wait(t, kAtBarrier);
  }
}

namespace {
// Fails unless the declared arrays and the dynamic area fit the device's limits.
void check_capacity(int line, const char* name, size_t bytes) {
  size_t declared = 0;
  for (int i = 0; i < g_n_arrays; ++i)
    if (g_arrays[i].line) declared += (g_arrays[i].bytes + 15) / 16 * 16;
  const size_t dynamic = size_t(launch->dynamic_shared);
  if (launch->model == kMetal) {
    if (declared > kThreadgroupMemory)
      fail(line, "threadgroup memory: %zu bytes declared with %s (%zu bytes), above the %zu bytes "
           "an Apple GPU threadgroup may use", declared, name, bytes, kThreadgroupMemory);
    return;
  }
  if (declared > kStaticShared)
    fail(line, "shared memory: %zu bytes declared statically with %s (%zu bytes), above the %zu "
         "bytes a CUDA block may declare", declared, name, bytes, kStaticShared);
  // MLX raises the kernel's limit on dynamic shared memory above 48000 bytes (custom_kernel.cpp)
  const size_t limit = dynamic > 48000 ? kOptInShared : kStaticShared;
  if (declared + dynamic > limit)
    fail(line, "shared memory: %zu bytes declared with %s (%zu bytes) and %zu dynamic, above "
         "the %zu bytes a block may use", declared, name, bytes, dynamic, limit);
}

TgArray* find_array(int line, const char* name, size_t bytes, size_t count) {
  TgArray* a = nullptr;
  for (int i = 0; i < g_n_arrays; ++i)
    if (g_arrays[i].line == line && strcmp(g_arrays[i].name, name) == 0) a = &g_arrays[i];
  if (!a) {
    if (g_n_arrays == int(sizeof g_arrays / sizeof g_arrays[0]))
      fail(line, "more than %d %s arrays", g_n_arrays, words->memory);
    a = &g_arrays[g_n_arrays++];
    a->line = line;
    a->name = name;
    a->bytes = bytes;
    a->count = count;
    a->data = static_cast<char*>(aligned_alloc(16, (bytes + 15) / 16 * 16));
    a->shadow = static_cast<Shadow*>(malloc(sizeof(Shadow) * (count ? count : 1)));
    a->declared_in = 0;
    check_capacity(line, name, bytes);
  }
  if (a->declared_in != g_group_serial) {  // a new threadgroup: nothing written yet
    a->declared_in = g_group_serial;
    for (size_t i = 0; i < count; ++i) a->shadow[i] = Shadow{-1, -1, 0, 0, 0, 0};
    memset(a->data, 0xa5, a->bytes);
  }
  return a;
}
}  // namespace

char* tg_alloc(int line, const char* name, size_t bytes, size_t count, Shadow** shadow) {
  TgArray* a = find_array(line, name, bytes, count);
  *shadow = a->shadow;
  return a->data;
}

char* dynamic_alloc(int line, const char* name, size_t* bytes, Shadow** shadow) {
  const size_t n = size_t(launch->dynamic_shared);
  // one area whatever its declarations call it: line 0 names it
  TgArray* a = find_array(0, "", n, n);
  (void)line;
  (void)name;
  *bytes = n;
  *shadow = a->shadow;
  return a->data;
}

namespace {

const char* where(const Thread* t) {
  switch (t->state) {
    case kAtBarrier:
    case kAtSimd: return t->what;
    case kDone: return "return";
    default: return "running";
  }
}

// Runs the SIMD-group operations whose lanes have all arrived; false when none could run.
bool run_simd_ops(uint32_t n) {
  bool progressed = false;
  for (uint32_t s = 0; s * 32 < n; ++s) {
    Thread* lanes[32] = {};
    const Thread* first = nullptr;
    int waiting = 0, live = 0;
    for (uint32_t l = 0; l < 32 && s * 32 + l < n; ++l) {
      Thread* t = &g_threads[s * 32 + l];
      if (t->state == kDone) continue;
      ++live;
      if (t->state != kAtSimd) continue;
      ++waiting;
      lanes[l] = t;
      if (!first) first = t;
    }
    if (!waiting) continue;
    if (waiting != live) {
      for (uint32_t l = 0; l < 32 && s * 32 + l < n; ++l) {
        const Thread* t = &g_threads[s * 32 + l];
        if (t->state != kDone && t->state != kAtSimd) {
          report(first->line, "divergent %s: lane %u is at %s (line %d) while lane %u waits "
                 "at %s (line %d); a %s operation needs every active lane", words->simd, l,
                 where(t), t->line, first->lid % 32, first->what, first->line, words->simd);
          return false;
        }
      }
    }
    for (int l = 0; l < 32; ++l) {
      if (lanes[l] && (lanes[l]->fn != first->fn || lanes[l]->line != first->line)) {
        report(first->line, "divergent %s: lane %d is at %s (line %d), lane %u at %s "
               "(line %d)", words->simd, l, lanes[l]->what, lanes[l]->line, first->lid % 32,
               first->what, first->line);
        return false;
      }
    }
    first->fn(lanes, first->line);
    if (g_aborted) return false;
    for (int l = 0; l < 32; ++l)
      if (lanes[l]) lanes[l]->state = kReady;
    progressed = true;
  }
  return progressed;
}

// Releases a barrier every thread has reached; false after reporting why it cannot be.
bool release_barrier(uint32_t n) {
  const Thread* first = nullptr;
  const Thread* gone = nullptr;
  for (uint32_t i = 0; i < n; ++i) {
    const Thread* t = &g_threads[i];
    if (t->state == kDone) {
      if (!gone) gone = t;
      continue;
    }
    if (!first) first = t;
    if (t->state != kAtBarrier || t->line != first->line) {
      report(first->line, "divergent %s: thread %u is at %s (line %d) while thread %u "
             "is at %s (line %d)", words->group, t->lid, where(t), t->line, first->lid,
             first->what, first->line);
      return false;
    }
    if (t->flags != first->flags) {
      report(first->line, "%s: threads %u and %u pass different memory flags", first->what,
             first->lid, t->lid);
      return false;
    }
  }
  if (gone) {
    report(first->line, "%s (line %d) is not reached by every thread of the %s: thread %u %s "
           "before it", first->what, first->line, words->group, gone->lid, words->exited);
    return false;
  }
  if (first->flags & kMemThreadgroup) ++g_group.phase;
  for (uint32_t i = 0; i < n; ++i) g_threads[i].state = kReady;
  return true;
}

void run_group(uint64_t linear) {
  Group& G = g_group;
  const Launch* L = launch;
  uint64_t rest = linear;
  uint64_t extent[3];  // threads launched along each dimension
  for (int d = 0; d < 3; ++d) {
    G.pos[d] = uint32_t(rest % G.count[d]);
    rest /= G.count[d];
    const uint32_t start = G.pos[d] * G.dispatch[d];
    G.size[d] = L->model == kCuda || L->grid[d] - start >= G.dispatch[d] ? G.dispatch[d]
                                                                          : L->grid[d] - start;
    extent[d] = L->model == kCuda ? uint64_t(G.count[d]) * G.dispatch[d] : L->grid[d];
  }
  const uint32_t n = G.size[0] * G.size[1] * G.size[2];
  G.n = n;
  G.phase = 0;
  memset(G.simd_phase, 0, sizeof G.simd_phase);
  ++g_group_serial;
  for (uint32_t i = 0; i < n; ++i) {
    Thread* t = &g_threads[i];
    t->lid = i;
    t->simd = i / 32;
    t->pos_tg[0] = i % G.size[0];
    t->pos_tg[1] = (i / G.size[0]) % G.size[1];
    t->pos_tg[2] = i / (G.size[0] * G.size[1]);
    for (int d = 0; d < 3; ++d) t->pos_grid[d] = G.pos[d] * G.dispatch[d] + t->pos_tg[d];
    t->gid = int64_t((t->pos_grid[2] * extent[1] + t->pos_grid[1]) * extent[0] + t->pos_grid[0]);
    t->state = kReady;
    t->line = 0;
    char* base = g_stacks + size_t(i) * kStack;
    memcpy(base, &kCanary, sizeof kCanary);
    t->stack = base;
    t->sp = fiber_init(base + kStack, fiber_main, t);
  }
  for (;;) {
    bool any_live = false;
    for (uint32_t i = 0; i < n; ++i) {
      Thread* t = &g_threads[i];
      if (t->state == kReady) resume(t);
      if (g_aborted) return;
      any_live |= t->state != kDone;
    }
    if (!any_live) break;
    if (run_simd_ops(n)) continue;
    if (g_aborted || !release_barrier(n)) return;
  }
  for (uint32_t i = 0; i < n; ++i) {
    if (memcmp(g_threads[i].stack, &kCanary, sizeof kCanary) != 0) {
      report(0, "thread %u overflowed its %zu-byte stack", i, kStack);
      return;
    }
  }
}

void check_unwritten() {
  for (int i = 0; i < launch->n_buffers; ++i) {
    const Buffer& b = launch->buffers[i];
    if (!b.writer) continue;
    const int64_t n = b.nbytes / b.elem_size;
    int64_t first = -1, count = 0;
    for (int64_t e = 0; e < n; ++e) {
      if (b.writer[e] == kUnwritten) {
        if (first < 0) first = e;
        ++count;
      }
    }
    if (count) {
      report(0, "the kernel left %lld of the %lld elements of output %s unwritten (the first: "
             "%s[%lld]); MLX returns such elements uninitialised", (long long)count, (long long)n,
             b.name, b.name, (long long)first);
      return;
    }
  }
}

}  // namespace

int run(Launch* L, Entry entry) {
  launch = L;
  words = &kWords[L->model == kCuda ? 1 : 0];
  g_entry = entry;
  g_aborted = false;
  L->error[0] = 0;
  L->error_line = 0;
  Group& G = g_group;
  group = &G;
  G.threads = g_threads;
  uint64_t groups = 1, per_group = 1;
  for (int d = 0; d < 3; ++d) {
    if (L->grid[d] == 0 || L->threadgroup[d] == 0) {
      report(0, "empty grid or threadgroup: grid (%u, %u, %u), threadgroup (%u, %u, %u)",
             L->grid[0], L->grid[1], L->grid[2], L->threadgroup[0], L->threadgroup[1], L->threadgroup[2]);
      return 1;
    }
    // MLX dispatches min(threadgroup, grid) per dimension (backend/metal/custom_kernel.cpp);
    // its CUDA backend launches blocks of that size, ceil(grid / threadgroup) of them
    // (backend/cuda/custom_kernel.cpp, CustomKernel::eval_gpu), all whole.
    G.dispatch[d] = L->threadgroup[d] < L->grid[d] ? L->threadgroup[d] : L->grid[d];
    G.count[d] = L->model == kCuda ? (L->grid[d] + L->threadgroup[d] - 1) / L->threadgroup[d]
                                   : (L->grid[d] + G.dispatch[d] - 1) / G.dispatch[d];
    groups *= G.count[d];
    per_group *= G.dispatch[d];
  }
  if (per_group > kMaxThreads) {
    report(0, "%s of %llu threads: %s run at most %u per %s", words->group,
           (unsigned long long)per_group, L->model == kCuda ? "CUDA GPUs" : "Apple GPUs",
           kMaxThreads, words->group);
    return 1;
  }
  if (L->max_threads > 0 && per_group > uint64_t(L->max_threads)) {
    report(0, "%s of %llu threads: the kernel's __launch_bounds__ allow at most %d (CUDA "
           "refuses the launch)", words->group, (unsigned long long)per_group, L->max_threads);
    return 1;
  }
  if (L->dynamic_shared > int64_t(L->model == kCuda ? kOptInShared : 0)) {
    report(0, "%lld bytes of dynamic %s requested: the most a %s may have is %zu",
           (long long)L->dynamic_shared, words->memory, words->group,
           L->model == kCuda ? kOptInShared : size_t(0));
    return 1;
  }
  for (int i = 0; i < L->n_buffers; ++i) {
    Buffer& b = L->buffers[i];
    b.writer = nullptr;
    if (!b.writable) continue;
    const int64_t n = b.nbytes / b.elem_size;
    b.writer = static_cast<int32_t*>(calloc(size_t(n > 0 ? n : 1), sizeof(int32_t)));
    if (b.initialised)
      for (int64_t e = 0; e < n; ++e) b.writer[e] = kInitialised;
  }
  g_stacks_bytes = size_t(per_group) * kStack;
  g_stacks = static_cast<char*>(mmap(nullptr, g_stacks_bytes, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (g_stacks == MAP_FAILED) {
    report(0, "cannot map %zu bytes of thread stacks", g_stacks_bytes);
    g_stacks = nullptr;
  } else {
    const uint64_t n = L->groups ? uint64_t(L->n_groups) : groups;
    for (uint64_t g = 0; g < n && !g_aborted; ++g) {
      const uint64_t linear = L->groups ? uint64_t(L->groups[g]) : g;
      if (linear >= groups) {
        report(0, "threadgroup %llu requested of a grid of %llu", (unsigned long long)linear,
               (unsigned long long)groups);
        break;
      }
      run_group(linear);
    }
    munmap(g_stacks, g_stacks_bytes);
    g_stacks = nullptr;
  }
  if (!g_aborted && L->check_unwritten) check_unwritten();
  for (int i = 0; i < L->n_buffers; ++i) {
    free(L->buffers[i].writer);
    L->buffers[i].writer = nullptr;
  }
  free_arrays();
  current = nullptr;
  group = nullptr;
  launch = nullptr;
  return g_aborted ? 1 : 0;
}

}  // namespace rt
}  // namespace emu

// -- UndefinedBehaviorSanitizer hooks: kernels are compiled with -fsanitize=bounds,
// integer-divide-by-zero,shift and no recovery; these report the fault as a launch error
// (no libubsan needed). Each handler's data begins with the source location.
namespace {
struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
}  // namespace

#define MT_UBSAN(name, what)                                                           \
  extern "C" __attribute__((visibility("hidden"))) void name(void* data, ...) {        \
    emu::rt::fail(int(static_cast<SourceLocation*>(data)->line), "%s", what);          \
  }
MT_UBSAN(__ubsan_handle_out_of_bounds_abort, "index out of bounds of a thread's local array")
MT_UBSAN(__ubsan_handle_divrem_overflow_abort, "integer division by zero (or of the minimum by -1)")
MT_UBSAN(__ubsan_handle_shift_out_of_bounds_abort, "shift by a negative amount or by the type's width or more")
MT_UBSAN(__ubsan_handle_vla_bound_not_positive_abort, "variable-length array of non-positive size")
#undef MT_UBSAN
