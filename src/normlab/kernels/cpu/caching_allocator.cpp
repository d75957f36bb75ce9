// A caching CPU allocator for training loops: freed blocks are kept, by size, and handed
// out again, so each step's fresh activations and gradients land in memory that is
// already mapped.
//
// Why: torch's default CPU allocator asks glibc for 64-byte-aligned blocks
// (posix_memalign), and glibc gives a block of ~1 MB back to the kernel when it is freed;
// the next step's tensor of the same size then takes a page fault on every 4 KiB page as
// it is first written (on LeNet, 216 faults for each 64x6x24x24 float tensor, every step;
// mallopt's thresholds do not change that for aligned blocks). CUDA's caching allocator
// exists for the same reason.
//
// Blocks of at least kMinCached bytes, rounded up to 4 KiB, are cached per size up to a
// total of max_cached_bytes (beyond it they are freed); smaller ones go straight to
// c10::alloc_cpu / c10::free_cpu. Every pointer is recorded with its size, so the
// allocator also serves raw_allocate / raw_deallocate. Thread-safe (one mutex).

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace normlab {
namespace {

constexpr size_t kMinCached = 64 * 1024;
constexpr size_t kPage = 4096;

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    const size_t size = n < kMinCached ? n : (n + kPage - 1) / kPage * kPage;
    void* ptr = size < kMinCached ? nullptr : take(size);
    if (ptr == nullptr) ptr = c10::alloc_cpu(size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[ptr] = size;
    }
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void set_limit(size_t max_cached_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = max_cached_bytes;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  static CachingCPUAllocator& instance() {
    static auto* allocator = new CachingCPUAllocator();  // never destroyed: outlives tensors
    return *allocator;
  }

 private:
  static void release(void* ptr) {
    if (ptr != nullptr) instance().give_back(ptr);
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = free_.find(size);
    if (found == free_.end() || found->second.empty()) return nullptr;
    void* ptr = found->second.back();
    found->second.pop_back();
    cached_ -= size;
    return ptr;
  }

  void give_back(void* ptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = sizes_.find(ptr);
      const size_t size = found->second;
      sizes_.erase(found);
      if (size >= kMinCached && cached_ + size <= limit_) {
        free_[size].push_back(ptr);
        cached_ += size;
        return;
      }
    }
    c10::free_cpu(ptr);
  }

  std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;               // live blocks and their sizes
  std::unordered_map<size_t, std::vector<void*>> free_;   // cached blocks, by size
  size_t cached_ = 0;
  size_t limit_ = 0;
};

// Make the caching allocator torch's CPU allocator for this process (tensors allocated
// before keep their own deleters). Calling it again only changes the limit.
void use_caching_cpu_allocator(int64_t max_cached_bytes) {
  auto& allocator = CachingCPUAllocator::instance();
  allocator.set_limit(static_cast<size_t>(max_cached_bytes));
  c10::SetCPUAllocator(&allocator, /*priority=*/1);
}

// Bytes held in the cache (freed blocks waiting for reuse).
int64_t cached_cpu_bytes() {
  return static_cast<int64_t>(CachingCPUAllocator::instance().cached_bytes());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(normlab, m) {
  m.def("use_caching_cpu_allocator(int max_cached_bytes) -> ()", &use_caching_cpu_allocator);
  m.def("cached_cpu_bytes() -> int", &cached_cpu_bytes);
}

}  // namespace normlab
