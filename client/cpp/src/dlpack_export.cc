#include "dlpack_export.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "zerocopy/dtype.h"

namespace zerocopy::internal {

namespace {

struct Context {
  std::shared_ptr<const void> owner;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

DLManagedTensor* Make(Context* ctx, void* data, DLDevice device, DLDataType dtype) {
  auto* managed = new DLManagedTensor{};
  managed->dl_tensor.data = data;
  managed->dl_tensor.device = device;
  managed->dl_tensor.ndim = static_cast<int32_t>(ctx->shape.size());
  managed->dl_tensor.dtype = dtype;
  managed->dl_tensor.shape = ctx->shape.data();
  managed->dl_tensor.strides = ctx->strides.data();
  managed->dl_tensor.byte_offset = 0;
  managed->manager_ctx = ctx;
  managed->deleter = [](DLManagedTensor* self) {
    delete static_cast<Context*>(self->manager_ctx);
    delete self;
  };
  return managed;
}

}  // namespace

absl::StatusOr<DLManagedTensor*> TensorToDLPack(std::shared_ptr<const void> owner, void* data, DLDevice device,
                                                const v1::Tensor& spec) {
  DLDataType dtype;
  if (!ToDLDataType(spec.dtype(), &dtype)) {
    return absl::UnimplementedError(absl::StrCat("tensor '", spec.name(), "' has dtype ", DTypeName(spec.dtype()),
                                                 ", which DLPack cannot describe"));
  }
  auto* ctx = new Context{std::move(owner), {spec.shape().begin(), spec.shape().end()}, {}};
  if (spec.strides_size() != 0) {
    ctx->strides.assign(spec.strides().begin(), spec.strides().end());
  } else {
    ctx->strides.resize(ctx->shape.size());
    int64_t s = 1;
    for (size_t i = ctx->shape.size(); i-- > 0;) {
      ctx->strides[i] = s;
      s *= ctx->shape[i];
    }
  }
  return Make(ctx, data, device, dtype);
}

DLManagedTensor* BytesToDLPack(std::shared_ptr<const void> owner, void* data, DLDevice device, uint64_t size) {
  auto* ctx = new Context{std::move(owner), {static_cast<int64_t>(size)}, {1}};
  return Make(ctx, data, device, DLDataType{kDLUInt, 8, 1});
}

}  // namespace zerocopy::internal
