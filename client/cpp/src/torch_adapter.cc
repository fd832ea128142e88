// libzerocopy_torch: the one translation unit that includes LibTorch. It
// reads TorchScript archives into ModelSources and builds LibTorch tensors
// and modules over mapped models. (torch.save files are read without
// LibTorch: torch_save_file.cc.)
#include "zerocopy/torch.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "zerocopy/dtype.h"
#include "zerocopy/status.h"
#include "zerocopy/torch_formats.h"
#include "zerocopy/unique_fd.h"

namespace zerocopy {

namespace {

struct DTypePair {
  at::ScalarType torch;
  DType ours;
};
constexpr DTypePair kDTypes[] = {
    {at::kDouble, v1::F64},
    {at::kFloat, v1::F32},
    {at::kHalf, v1::F16},
    {at::kBFloat16, v1::BF16},
    {at::kLong, v1::I64},
    {at::kInt, v1::I32},
    {at::kShort, v1::I16},
    {at::kChar, v1::I8},
    {at::kByte, v1::U8},
    {at::kBool, v1::BOOL},
    {at::kComplexFloat, v1::C64},
    {at::kComplexDouble, v1::C128},
    {at::kUInt16, v1::U16},
    {at::kUInt32, v1::U32},
    {at::kUInt64, v1::U64},
    {at::kFloat8_e4m3fn, v1::F8_E4M3},
    {at::kFloat8_e5m2, v1::F8_E5M2},
};

std::optional<DType> OurDType(at::ScalarType t) {
  for (const auto& p : kDTypes) {
    if (p.torch == t) return p.ours;
  }
  return std::nullopt;
}

std::optional<at::ScalarType> TorchDType(DType d) {
  for (const auto& p : kDTypes) {
    if (p.ours == d) return p.torch;
  }
  return std::nullopt;
}

// LibTorch reports errors by exception; none may escape this file.
template <typename F>
auto Guard(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", e.what()));
  }
}

// Adds tensors to a Checkpoint, one storage per distinct torch storage (so
// tied tensors stay tied), keeping every tensor alive in the checkpoint.
class Collector {
 public:
  explicit Collector(Checkpoint& out) : out_(out), alive_(std::make_shared<std::vector<at::Tensor>>()) {
    out_.owners.push_back(alive_);
  }

  absl::Status Add(const std::string& name, const at::Tensor& t) {
    if (name.empty()) return absl::InvalidArgumentError("a tensor at the top level has no name: save a dict");
    if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is undefined"));
    if (t.layout() != at::kStrided || t.is_quantized()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is ",
                                                     t.layout() != at::kStrided ? "sparse" : "quantized",
                                                     ", which zerocopy cannot hold: convert it to a dense tensor"));
    }
    if (t.is_conj() || t.is_neg()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name,
                                                     "' is a lazy conjugate or negative view: "
                                                     "materialise it (.resolve_conj(), .resolve_neg()) before saving"));
    }
    if (!t.device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is on ", t.device().str()));
    }
    auto dtype = OurDType(t.scalar_type());
    if (!dtype) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has dtype ", c10::toString(t.scalar_type()),
                                                     ", which zerocopy cannot hold"));
    }
    const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    auto [it, fresh] = storage_index_.emplace(impl, static_cast<uint32_t>(out_.source.manifest.storages_size()));
    if (fresh) {
      out_.source.manifest.add_storages()->set_size(t.storage().nbytes());
      out_.source.storage_data.push_back(t.storage().data());
      alive_->push_back(t);
    }
    auto* spec = out_.source.manifest.add_tensors();
    spec->set_name(name);
    spec->set_storage(it->second);
    spec->set_byte_offset(static_cast<uint64_t>(t.storage_offset()) * t.element_size());
    spec->set_dtype(*dtype);
    for (int64_t d : t.sizes()) spec->add_shape(d);
    if (!t.is_contiguous()) {
      for (int64_t s : t.strides()) spec->add_strides(s);
    }
    return absl::OkStatus();
  }

 private:
  Checkpoint& out_;
  std::shared_ptr<std::vector<at::Tensor>> alive_;
  std::unordered_map<const c10::StorageImpl*, uint32_t> storage_index_;
};

// Walks "a.b.c" to the module owning attribute c.
std::pair<torch::jit::Module, std::string> Owner(torch::jit::Module module, const std::string& path) {
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) module = module.attr(parts[i]).toModule();
  return {module, parts.back()};
}

struct StorageContext {
  std::shared_ptr<MappedModel> model;
  static void Delete(void* ctx) { delete static_cast<StorageContext*>(ctx); }
};

}  // namespace

absl::StatusOr<Checkpoint> ReadTorchScript(const std::string& path) {
  return Guard(path, [&]() -> absl::StatusOr<Checkpoint> {
    torch::jit::Module module = torch::jit::load(path, c10::Device(c10::kCPU));
    Checkpoint out;
    out.source.manifest.set_format("torchscript");
    Collector tensors(out);
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const auto& p : module.named_parameters(/*recurse=*/true)) named.emplace_back(p.name, p.value);
    for (const auto& b : module.named_buffers(/*recurse=*/true)) named.emplace_back(b.name, b.value);
    for (const auto& [name, t] : named) {
      absl::Status st = tensors.Add(name, t);
      if (!st.ok()) return Annotate(st, path);
    }
    // The skeleton: the same archive with every weight swapped for an
    // empty tensor of its dtype (the collector keeps the originals alive).
    for (const auto& [name, t] : named) {
      auto [owner, leaf] = Owner(module, name);
      owner.setattr(leaf, at::empty({0}, t.options()));
    }
    std::ostringstream archive;
    module.save(archive);
    out.source.manifest.set_metadata(absl::StrCat(kTorchScriptMagic, archive.str()));
    return out;
  });
}

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& input, CheckpointFormat format) {
  if (format == CheckpointFormat::kTorchScript) {
    ZC_ASSIGN_OR_RETURN(std::string path, ResolveCheckpointPath(input));
    return ReadTorchScript(path);
  }
  return ReadNativeCheckpoint(input, format);
}

absl::StatusOr<torch::OrderedDict<std::string, at::Tensor>> TorchStateDict(const std::shared_ptr<MappedModel>& model) {
  const v1::Manifest& manifest = model->manifest();
  return Guard(model->digest(), [&]() -> absl::StatusOr<torch::OrderedDict<std::string, at::Tensor>> {
    std::vector<c10::Storage> storages;
    storages.reserve(static_cast<size_t>(manifest.storages_size()));
    for (const auto& s : manifest.storages()) {
      void* ptr = const_cast<uint8_t*>(model->data()) + s.offset();
      auto* ctx = new StorageContext{model};
      c10::DataPtr data(ptr, ctx, &StorageContext::Delete, c10::Device(c10::kCPU));
      storages.emplace_back(c10::Storage::use_byte_size_t(), static_cast<size_t>(s.size()), std::move(data),
                            /*allocator=*/nullptr, /*resizable=*/false);
    }
    torch::OrderedDict<std::string, at::Tensor> out;
    out.reserve(static_cast<size_t>(manifest.tensors_size()));
    for (const auto& spec : manifest.tensors()) {
      auto dtype = TorchDType(spec.dtype());
      if (!dtype) {
        return absl::UnimplementedError(
            absl::StrCat("tensor '", spec.name(), "' has dtype ", DTypeName(spec.dtype()), ", which LibTorch lacks"));
      }
      size_t itemsize = DTypeSize(spec.dtype());
      if (spec.byte_offset() % itemsize != 0) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name(), "' starts at byte ", spec.byte_offset(),
                                                       ", not a multiple of its element size"));
      }
      std::vector<int64_t> shape(spec.shape().begin(), spec.shape().end());
      std::vector<int64_t> strides(spec.strides().begin(), spec.strides().end());
      if (strides.empty()) {
        strides.assign(shape.size(), 1);
        for (size_t d = shape.size(); d-- > 1;) strides[d - 1] = strides[d] * std::max<int64_t>(shape[d], 1);
      }
      at::Tensor t = at::empty({0}, at::TensorOptions().dtype(*dtype));
      t.set_(storages[spec.storage()], static_cast<int64_t>(spec.byte_offset() / itemsize), shape, strides);
      out.insert(spec.name(), std::move(t));
    }
    return out;
  });
}

absl::StatusOr<torch::jit::Module> LoadTorchScript(const std::shared_ptr<MappedModel>& model) {
  const std::string& metadata = model->manifest().metadata();
  if (!absl::StartsWith(metadata, kTorchScriptMagic)) {
    return absl::InvalidArgumentError(absl::StrCat("model ", model->digest(), " (", model->info().format(),
                                                   ") is not a TorchScript model: use TorchStateDict"));
  }
  ZC_ASSIGN_OR_RETURN(auto state, TorchStateDict(model));
  return Guard(model->digest(), [&]() -> absl::StatusOr<torch::jit::Module> {
    std::istringstream archive(metadata.substr(sizeof(kTorchScriptMagic) - 1));
    torch::jit::Module module = torch::jit::load(archive, c10::Device(c10::kCPU));
    for (const auto& item : state) {
      auto [owner, leaf] = Owner(module, item.key());
      owner.setattr(leaf, item.value());
    }
    module.eval();
    return module;
  });
}

namespace {

constexpr char kAotiFormat[] = "aoti";
constexpr char kCompiledDir[] = "data/aotinductor/";

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  for (size_t slash = path.find('/', 1);; slash = path.find('/', slash + 1)) {
    const std::string prefix = path.substr(0, slash);
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST)
      return ErrnoStatus(errno, absl::StrCat("mkdir ", prefix));
    if (slash == std::string::npos) return absl::OkStatus();
  }
}

absl::Status WriteWhole(const std::string& path, absl::string_view bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return ErrnoStatus(errno, absl::StrCat("create ", path));
  for (size_t done = 0; done < bytes.size();) {
    ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("write ", path));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void RemoveTree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

// A directory of this user's that no one else may write (not a link): what
// the cache and each program in it must be before a library in it is
// loaded (another user's library is never loaded from a shared cache).
bool Private(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
         (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

// Every file of the program is there with its size (a cache cleaner may
// have removed some).
bool Complete(const std::string& dir, const MappedModel& model) {
  for (const auto& file : model.manifest().files()) {
    struct stat st;
    const std::string path = absl::StrCat(dir, "/", file.name());
    if (::lstat(path.c_str(), &st) != 0 ||
        static_cast<uint64_t>(st.st_size) != model.manifest().storages(static_cast<int>(file.storage())).size()) {
      return false;
    }
  }
  return true;
}

// The program files of `model` under `cache`/<digest>/, written once
// (into a temporary directory renamed into place, so a reader never sees
// half of them).
absl::StatusOr<std::string> ProgramDirectory(const MappedModel& model, std::string cache) {
  if (cache.empty()) {
    const char* env = std::getenv("ZEROCOPY_AOTI_CACHE");
    const char* home = std::getenv("HOME");
    if (env != nullptr && *env != '\0') {
      cache = env;
    } else if (home != nullptr && *home != '\0') {
      cache = absl::StrCat(home, "/.cache/zerocopy/aoti");
    } else {
      return absl::FailedPreconditionError("no cache directory for AOTInductor programs: set ZEROCOPY_AOTI_CACHE");
    }
  }
  const std::string dir = absl::StrCat(cache, "/", model.digest());
  ZC_RETURN_IF_ERROR(MakeDirs(cache, 0700));
  if (!Private(cache)) {
    return absl::FailedPreconditionError(absl::StrCat("the AOTInductor program cache ", cache,
                                                      " is not a directory of "
                                                      "this user (uid ",
                                                      ::geteuid(),
                                                      ") writable by no one else; set "
                                                      "ZEROCOPY_AOTI_CACHE"));
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) == 0) {
    if (Private(dir) && Complete(dir, model)) return dir;
    // Moved aside, not removed: a process may be running from it.
    std::string stale = absl::StrCat(cache, "/.", model.digest(), ".stale.XXXXXX");
    if (::mkdtemp(stale.data()) == nullptr || ::rename(dir.c_str(), stale.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat(dir, " is not this user's complete program of model ", model.digest(),
                                             " and cannot be moved aside"));
    }
  }
  std::string tmp = absl::StrCat(cache, "/.", model.digest(), ".XXXXXX");
  if (::mkdtemp(tmp.data()) == nullptr) return ErrnoStatus(errno, absl::StrCat("mkdtemp in ", cache));
  for (const auto& file : model.manifest().files()) {
    auto bytes = model.File(file.name());
    absl::Status written = bytes.status();
    const std::string path = absl::StrCat(tmp, "/", file.name());
    if (written.ok()) written = MakeDirs(path.substr(0, path.rfind('/')), 0700);
    if (written.ok()) written = WriteWhole(path, *bytes);
    if (!written.ok()) {
      RemoveTree(tmp);
      return written;
    }
  }
  if (::rename(tmp.c_str(), dir.c_str()) != 0) {
    const int err = errno;
    RemoveTree(tmp);
    if ((err != EEXIST && err != ENOTEMPTY) || !Private(dir) || !Complete(dir, model)) {
      return ErrnoStatus(err, absl::StrCat("rename ", tmp, " to ", dir));
    }
  }
  return dir;  // ours, or another process's written first
}

// The instruction sets a package's AOTI_CPU_ISA names (torch's vector ISAs,
// upper case) that this CPU lacks; one we cannot ask the CPU about counts
// as lacking.
std::vector<std::string> MissingInstructions(absl::string_view isa) {
  std::vector<std::string> missing;
  __builtin_cpu_init();
  for (absl::string_view token : absl::StrSplit(isa, ' ', absl::SkipEmpty())) {
    bool have = false;
    if (token == "INVALID_VEC_ISA") have = true;  // compiled without vector instructions
    if (token == "AVX2") have = __builtin_cpu_supports("avx2");
    if (token == "AVX512") have = __builtin_cpu_supports("avx512f");
    if (token == "AVX512_VNNI") have = __builtin_cpu_supports("avx512vnni");
    if (token == "AMX_TILE") {
      have = __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
             __builtin_cpu_supports("amx-int8");
    }
    if (!have) missing.emplace_back(token);
  }
  return missing;
}

}  // namespace

AotInductorModel::~AotInductorModel() = default;

absl::StatusOr<std::vector<at::Tensor>> AotInductorModel::Run(const std::vector<at::Tensor>& inputs) {
  return Guard(model_->digest(), [&]() -> absl::StatusOr<std::vector<at::Tensor>> { return loader_->run(inputs); });
}

absl::StatusOr<std::unique_ptr<AotInductorModel>> LoadAotInductor(const std::shared_ptr<MappedModel>& model,
                                                                  const std::string& cache_dir) {
  if (model->manifest().format() != kAotiFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", model->digest(), " (", model->manifest().format(), ") is not an AOTInductor package"));
  }
  std::set<std::string> names;
  for (const auto& f : model->manifest().files()) {
    if (absl::StartsWith(f.name(), kCompiledDir)) {
      const std::string rest = f.name().substr(sizeof kCompiledDir - 1);
      if (rest.find('/') != std::string::npos) names.insert(rest.substr(0, rest.find('/')));
    }
  }
  if (names.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", model->digest(), " keeps ", names.size(), " compiled models; a package has one"));
  }
  ZC_ASSIGN_OR_RETURN(std::string dir, ProgramDirectory(*model, cache_dir));
  ZC_ASSIGN_OR_RETURN(auto state, TorchStateDict(model));
  std::unique_ptr<AotInductorModel> out(new AotInductorModel());
  out->model_ = model;
  for (const auto& item : state) out->constants_.emplace(item.key(), item.value());
  ZC_RETURN_IF_ERROR(Guard(model->digest(), [&]() -> absl::Status {
    auto metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(dir, *names.begin());
    std::vector<std::string> problems;
    if (metadata.count("AOTI_DEVICE_KEY") && metadata["AOTI_DEVICE_KEY"] != "cpu") {
      problems.push_back(absl::StrCat("device ", metadata["AOTI_DEVICE_KEY"],
                                      " (LoadAotInductor runs CPU packages; ray_zerocopy.load_aoti runs CUDA ones)"));
    }
    struct utsname host;
    if (::uname(&host) == 0 && metadata.count("AOTI_MACHINE") && metadata["AOTI_MACHINE"] != host.machine) {
      problems.push_back(absl::StrCat("machine ", metadata["AOTI_MACHINE"], " (this one: ", host.machine, ")"));
    }
    if (metadata.count("AOTI_PLATFORM") && metadata["AOTI_PLATFORM"] != "linux") {
      problems.push_back(absl::StrCat("platform ", metadata["AOTI_PLATFORM"]));
    }
    if (auto missing = MissingInstructions(metadata["AOTI_CPU_ISA"]); !missing.empty()) {
      problems.push_back(absl::StrCat("instructions ", absl::StrJoin(missing, " "),
                                      " that this CPU lacks (or that cannot be checked here)"));
    }
    if (!problems.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("model ", model->digest(),
                                                        " was compiled for another "
                                                        "machine: ",
                                                        absl::StrJoin(problems, "; ")));
    }
    out->loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(dir, *names.begin());
    out->loader_->load_constants(out->constants_, /*use_inactive=*/false, /*check_full_update=*/true,
                                 /*user_managed=*/true);
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace zerocopy
