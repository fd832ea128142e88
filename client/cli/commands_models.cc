#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "commands.h"
#include "zerocopy/manifest.h"
#include "zerocopy/checkpoint.h"
#if ZEROCOPY_HAVE_TORCH
#include "zerocopy/torch_formats.h"
#endif

namespace zerocopy::cli {

namespace {

using json = nlohmann::json;

// A one-line progress bar on stderr when it is a terminal.
class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled), start_(std::chrono::steady_clock::now()) {}
  void Update(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    std::lock_guard<std::mutex> lock(mu_);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    int width = 30;
    int filled = total ? static_cast<int>(width * done / total) : width;
    std::fprintf(stderr, "\r[%s%s] %5.1f%% %s/%s %s/s ", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), total ? 100.0 * done / total : 100.0,
                 FormatBytes(done, 1).c_str(), FormatBytes(total, 1).c_str(),
                 FormatBytes(s > 0 ? static_cast<uint64_t>(done / s) : 0, 1).c_str());
    if (done >= total) std::fprintf(stderr, "\n");
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
};

void PrintInfoLine(const v1::ModelInfo& m) {
  std::printf("%-32s  %-24s  %10s  %7u  %-6s  %6u  %6s  %s\n", m.digest().c_str(),
              m.names().empty() ? "-" : absl::StrJoin(m.names(), ",").c_str(), FormatBytes(m.size(), 1).c_str(),
              m.tensor_count(), m.pinned() ? "yes" : "no", m.leases(),
              m.has_publisher_uid() ? std::to_string(m.publisher_uid()).c_str() : "-", OriginText(m.origin()).c_str());
}

// The program that reads TorchScript archives: this one built with
// LibTorch, installed next to this one.
constexpr char kTorchScriptProgram[] = "zerocopy-torchscript";

absl::StatusOr<Checkpoint> ReadAny(const Globals& g, const std::string& path, CheckpointFormat format) {
#if ZEROCOPY_HAVE_TORCH
  return ReadCheckpoint(path, format);
#else
  if (format != CheckpointFormat::kTorchScript) return ReadNativeCheckpoint(path, format);
  // This program does not load LibTorch (every other format starts without
  // it): the one that does takes over, with the same arguments. It is
  // $ZEROCOPY_TORCHSCRIPT when set, else zerocopy-torchscript next to this
  // program (a source build installs both; the Debian package has no
  // LibTorch to link it with, so it leaves it out).
  std::string program = kTorchScriptProgram;
  if (const char* named = std::getenv("ZEROCOPY_TORCHSCRIPT"); named != nullptr && *named != '\0') {
    program = named;
    // Named once: should it be this program again, it errs instead of
    // handing over to itself for ever.
    ::unsetenv("ZEROCOPY_TORCHSCRIPT");
  } else {
    char self[PATH_MAX];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      const std::string exe(self, static_cast<size_t>(n));
      program = exe.substr(0, exe.rfind('/') + 1) + kTorchScriptProgram;
    }
  }
  std::fflush(nullptr);
  ::execv(program.c_str(), g.argv);  // returns only if it could not run
  const int err = errno;
  return absl::FailedPreconditionError(absl::StrCat(
      path, " is a TorchScript archive, which takes LibTorch to read, and ", program,
      " (this program built with LibTorch) could not run: ", std::strerror(err),
      ". The Debian package leaves it out (LibTorch is no Debian package): build zerocopy from source "
      "(`make build`, which takes LibTorch from the project venv's torch) and set ZEROCOPY_TORCHSCRIPT to its "
      "build/client/cli/zerocopy-torchscript, or load the model from Python with torch installed. "
      "safetensors and torch.save files need no LibTorch."));
#endif
}

int Preload(Globals& g, const std::string& path, const std::string& format_name, const std::string& name, bool pin) {
  absl::StatusOr<CheckpointFormat> format = CheckpointFormatFor(path, format_name);
  if (!format.ok()) return Fail(g, format.status());
  auto checkpoint = ReadAny(g, path, *format);
  if (!checkpoint.ok()) return Fail(g, checkpoint.status());
  const ModelSource& source = checkpoint->source;
  Progress progress(!g.json && ::isatty(2));
  PublishOptions options;
  options.name = name;
  options.pin = pin;
  options.origin = PreloadedFrom(path);
  options.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
  auto start = std::chrono::steady_clock::now();
  auto info = g.client()->Publish(source, options);
  if (!info.ok()) return Fail(g, info.status());
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // (The recorded origin has no duration: it is known only after the commit.)
  if (g.json) {
    PrintJson(*info);
  } else {
    std::printf("%s\n", info->digest().c_str());
    const int files = source.manifest.files_size();
    std::fprintf(stderr, "preloaded %s (%s): %u tensors%s, %s in %.2f s (%s/s)%s%s\n", path.c_str(),
                 source.manifest.format().c_str(), info->tensor_count(),
                 files ? absl::StrCat(" and ", files, files == 1 ? " file" : " files").c_str() : "",
                 FormatBytes(info->size(), 1).c_str(), s,
                 FormatBytes(static_cast<uint64_t>(info->size() / s), 1).c_str(), name.empty() ? "" : ", named ",
                 name.c_str());
  }
  return 0;
}

int List(Globals& g) {
  auto list = g.client()->List();
  if (!list.ok()) return Fail(g, list.status());
  if (g.json) {
    PrintJson(*list);
    return 0;
  }
  std::printf("%-32s  %-24s  %10s  %7s  %-6s  %6s  %6s  %s\n", "DIGEST", "NAMES", "SIZE", "TENSORS", "PINNED", "LEASES",
              "UID", "ORIGIN");
  for (const auto& m : list->models()) PrintInfoLine(m);
  return 0;
}

// What a Hugging Face config.json kept with a model says: the
// architecture, model type and dtype; "" when it says nothing readable.
std::string ConfigSummary(absl::string_view text) {
  json config = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) return "";
  auto str = [&](const char* key) {
    auto it = config.find(key);
    return it != config.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string architecture;
  if (auto it = config.find("architectures");
      it != config.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    architecture = (*it)[0].get<std::string>();
  }
  std::string dtype = str("dtype").empty() ? str("torch_dtype") : str("dtype");
  return absl::StrCat(architecture.empty() ? "-" : architecture, " (model_type ",
                      str("model_type").empty() ? "-" : str("model_type"), ", dtype ", dtype.empty() ? "-" : dtype,
                      ")");
}

// Elements of every tensor of the manifest (a model's parameter and buffer count).
uint64_t ElementCount(const v1::Manifest& manifest) {
  uint64_t total = 0;
  for (const auto& t : manifest.tensors()) {
    uint64_t n = 1;
    for (int64_t d : t.shape()) n *= static_cast<uint64_t>(d);
    total += n;
  }
  return total;
}

// "1.23B", "45.6M", "789K", "12".
std::string HumanCount(uint64_t n) {
  if (n >= 1'000'000'000) return absl::StrFormat("%.2fB", n / 1e9);
  if (n >= 1'000'000) return absl::StrFormat("%.1fM", n / 1e6);
  if (n >= 10'000) return absl::StrFormat("%.0fK", n / 1e3);
  return std::to_string(n);
}

// The files kept with a model, and what its config.json says.
void PrintFiles(Globals& g, const std::string& digest, const v1::Manifest& manifest) {
  if (manifest.files().empty()) return;
  std::vector<std::string> files;
  uint64_t bytes = 0;
  for (const auto& f : manifest.files()) {
    files.push_back(f.name());
    bytes += manifest.storages(static_cast<int>(f.storage())).size();
  }
  std::printf("files:       %d (%s): %s\n", manifest.files_size(), FormatBytes(bytes, 1).c_str(),
              absl::StrJoin(files, ", ").c_str());
  MapOptions options;
  options.read_only = true;
  auto mapped = g.client()->Map(digest, options);
  if (!mapped.ok()) return;
  auto config = (*mapped)->File("config.json");
  if (!config.ok()) return;
  std::string summary = ConfigSummary(*config);
  if (!summary.empty()) {
    std::printf("config:      %s, %s parameters and buffers\n", summary.c_str(),
                HumanCount(ElementCount(manifest)).c_str());
  }
}

int Inspect(Globals& g, const std::string& ref, size_t max_tensors) {
  auto got = g.client()->Get(ref);
  if (!got.ok()) return Fail(g, got.status());
  if (g.json) {
    PrintJson(got->ToProto());
    return 0;
  }
  const auto& m = got->model();
  std::printf(
      "digest:      %s\nnames:       %s\nsize:        %s (%llu bytes)\nformat:      %s\n"
      "tensors:     %u in %u storages\nsegment:     %s\npinned:      %s\nleases:      %u\n"
      "huge pages:  %s\ngpu copies:  %s\ncreated:     %s\nlast used:   %s\nmetadata:    %zu bytes\n"
      "origin:      %s\npublisher:   %s\n",
      m.digest().c_str(), m.names().empty() ? "-" : absl::StrJoin(m.names(), ", ").c_str(),
      FormatBytes(m.size(), 1).c_str(), static_cast<unsigned long long>(m.size()), m.format().c_str(), m.tensor_count(),
      m.storage_count(), m.segment_path().c_str(), m.pinned() ? "yes" : "no", m.leases(), m.huge_pages() ? "yes" : "no",
      m.gpu_uuids().empty() ? "-" : absl::StrJoin(m.gpu_uuids(), ", ").c_str(), HumanTime(m.created_unix_ms()).c_str(),
      HumanTime(m.last_used_unix_ms()).c_str(), got->manifest().metadata().size(), OriginText(m.origin()).c_str(),
      m.has_publisher_uid() ? absl::StrCat("uid ", m.publisher_uid(), " gid ", m.publisher_gid()).c_str()
                            : "unknown (committed before publishers were recorded)");
  PrintFiles(g, m.digest(), got->manifest());
  std::printf("\n%-48s  %-6s  %-20s  %10s  %s\n", "TENSOR", "DTYPE", "SHAPE", "BYTES", "OFFSET");
  size_t shown = 0;
  for (const auto& t : got->manifest().tensors()) {
    if (shown++ == max_tensors) {
      std::printf("... %d more (--all shows them)\n", got->manifest().tensors_size() - static_cast<int>(max_tensors));
      break;
    }
    auto extent = TensorExtent(t);
    uint64_t offset = got->manifest().storages(static_cast<int>(t.storage())).offset() + t.byte_offset();
    std::printf("%-48s  %-6s  %-20s  %10s  %llu\n", t.name().c_str(), std::string(DTypeName(t.dtype())).c_str(),
                absl::StrCat("[", absl::StrJoin(t.shape(), ", "), "]").c_str(),
                FormatBytes(extent.ok() ? *extent : 0, 1).c_str(), static_cast<unsigned long long>(offset));
  }
  return 0;
}

int Remove(Globals& g, const std::string& ref, bool force) {
  auto digest = g.client()->Delete(ref, force);
  if (!digest.ok()) return Fail(g, digest.status());
  if (g.json)
    std::printf("%s\n", nlohmann::json{{"deleted", *digest}}.dump().c_str());
  else
    std::printf("deleted %s\n", digest->c_str());
  return 0;
}

int Verify(Globals& g, const std::string& ref) {
  MapOptions options;
  options.read_only = true;
  auto start = std::chrono::steady_clock::now();
  auto mapped = g.client()->Map(ref, options);
  if (!mapped.ok()) return Fail(g, mapped.status());
  std::string actual = (*mapped)->ComputeDigest();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool ok = actual == (*mapped)->digest();
  if (g.json) {
    std::printf("%s\n",
                nlohmann::json{{"digest", (*mapped)->digest()}, {"computed", actual}, {"ok", ok}, {"seconds", s}}
                    .dump()
                    .c_str());
  } else if (ok) {
    std::printf("ok %s (%s hashed in %.2f s)\n", actual.c_str(), FormatBytes((*mapped)->size(), 1).c_str(), s);
  }
  if (!ok) {
    std::fprintf(stderr, "zerocopy: %s is corrupt: its bytes hash to %s (remove it and preload it again)\n",
                 (*mapped)->digest().c_str(), actual.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

void AddModelCommands(CLI::App& app, Globals& g) {
  auto* preload = app.add_subcommand("preload", "publish a model file so that every process can map it");
  static std::string path, name, ref, format = "auto";
  static bool pin = false, force = false, all = false;
  preload
      ->add_option("PATH", path,
                   "a checkpoint: .safetensors, a Hugging Face directory (sharded or not), a torch.save file "
                   "(.pt/.pth/.bin), or a TorchScript archive")
      ->required();
  preload
      ->add_option("--format", format, "auto (from the content), safetensors, safetensors-sharded, torch, torchscript")
      ->capture_default_str();
  preload->add_option("--name", name, "tag the model with this name");
  preload->add_flag("--pin", pin, "never evict it");
  preload->callback([&] { g.exit_code = Preload(g, path, format, name, pin); });

  app.add_subcommand("ls", "list the models")->callback([&] { g.exit_code = List(g); });

  auto* inspect = app.add_subcommand("inspect", "show a model: tensors, sizes, digest, segment, leases");
  inspect->add_option("MODEL", ref, "name or digest")->required();
  inspect->add_flag("--all", all, "list every tensor (default: the first 50)");
  inspect->callback([&] { g.exit_code = Inspect(g, ref, all ? SIZE_MAX : 50); });

  auto* rm = app.add_subcommand("rm", "remove a model (processes that mapped it keep working)");
  rm->add_option("MODEL", ref, "name or digest")->required();
  rm->add_flag("--force", force, "also remove a pinned model");
  rm->callback([&] { g.exit_code = Remove(g, ref, force); });

  auto* verify = app.add_subcommand("verify", "map a model and recompute its digest; fails on a mismatch");
  verify->add_option("MODEL", ref, "name or digest")->required();
  verify->callback([&] { g.exit_code = Verify(g, ref); });

  auto* tag = app.add_subcommand("tag", "point a name at a model (moving a name is an admin call)");
  tag->add_option("NAME", name, "the new name")->required();
  tag->add_option("MODEL", ref, "digest, or a name it already has")->required();
  tag->callback([&] {
    auto info = g.client()->Tag(name, ref);
    if (!info.ok())
      g.exit_code = Fail(g, info.status());
    else if (g.json)
      PrintJson(*info);
    else
      std::printf("%s -> %s\n", name.c_str(), info->digest().c_str());
  });

  for (bool pinned : {true, false}) {
    auto* cmd = app.add_subcommand(pinned ? "pin" : "unpin", pinned ? "never evict a model" : "allow evicting a model");
    cmd->add_option("MODEL", ref, "name or digest")->required();
    cmd->callback([&, pinned] {
      auto info = g.client()->Pin(ref, pinned);
      if (!info.ok())
        g.exit_code = Fail(g, info.status());
      else if (g.json)
        PrintJson(*info);
      else
        std::printf("%s %s\n", pinned ? "pinned" : "unpinned", info->digest().c_str());
    });
  }
}

}  // namespace zerocopy::cli
