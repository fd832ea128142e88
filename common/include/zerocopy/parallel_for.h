// ParallelFor: runs fn(i) for i in [0, n) on up to `threads` threads
// (0: one per online core, at most 16), each thread taking the next index
// from a shared counter. fn must be thread-safe. Used for the parallel copy
// and hash of segments, where each index is a multi-MiB chunk.
#pragma once

#include <cstddef>
#include <functional>

namespace zerocopy {

void ParallelFor(size_t n, unsigned threads, const std::function<void(size_t)>& fn);

}  // namespace zerocopy
