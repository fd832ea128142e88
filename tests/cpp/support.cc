#include "support.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

namespace zerocopy::testing {

namespace {
// The built path, unless the environment names another (a copy of the
// build on another machine: tests/gpu/run.sh).
std::string Program(const char* env, const char* built) {
  const char* value = std::getenv(env);
  return value != nullptr && *value != '\0' ? value : built;
}
}  // namespace

std::string DaemonBinary() { return Program("ZEROCOPYD_BIN", ZEROCOPYD_BIN); }
std::string CliBinary() { return Program("ZEROCOPY_CLI_BIN", ZEROCOPY_CLI_BIN); }
std::string MapWorkerBinary() { return Program("ZEROCOPY_MAP_WORKER_BIN", MAP_WORKER_BIN); }

TempDir::TempDir(const std::string& base) {
  std::string pattern = base + "/zc-test-XXXXXX";
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

Tmpfs::Tmpfs(const std::string& size, const std::string& extra) {
  std::string options = "size=" + size + ",mode=0755" + extra;
  if (::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, options.c_str()) != 0) {
    FAIL("cannot mount a tmpfs (" << std::strerror(errno) << "): run the test suite as root");
  }
}

Tmpfs::~Tmpfs() { ::umount2(dir_.path().c_str(), MNT_DETACH); }

namespace {

std::vector<char*> Argv(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

int ExitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

bool SocketAccepts(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace

DaemonProcess::DaemonProcess() : DaemonProcess(Options()) {}

DaemonProcess::DaemonProcess(Options options) : options_(std::move(options)), shm_("/dev/shm") {
  socket_ = dir_.path() + "/zerocopyd.sock";
  segment_dir_ = options_.segment_dir.empty() ? shm_.path() + "/segments" : options_.segment_dir;
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

std::vector<std::string> DaemonProcess::Args() const {
  std::vector<std::string> args = {
      "--socket",           socket_,       "--segment-dir", segment_dir_,        "--host-budget",
      options_.host_budget, "--log-level", "debug",         "--metrics-address", options_.metrics_address};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  return args;
}

void DaemonProcess::Start() {
  REQUIRE(pid_ <= 0);
  std::vector<std::string> args = Args();
  args.insert(args.begin(), DaemonBinary());
  std::string log = dir_.path() + "/zerocopyd.log";
  auto argv = Argv(args);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    for (const auto& e : options_.env) ::putenv(const_cast<char*>(e.c_str()));
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  pid_ = pid;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!SocketAccepts(socket_)) {
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      FAIL("zerocopyd exited with status " << ExitStatus(status) << " while starting:\n" << this->log());
    }
    if (std::chrono::steady_clock::now() > deadline) FAIL("zerocopyd did not start in 20 s:\n" << this->log());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

int DaemonProcess::Stop(int signal) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, signal);
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pid_ = -1;
  return ExitStatus(status);
}

std::string DaemonProcess::log() const {
  std::ifstream in(dir_.path() + "/zerocopyd.log");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::shared_ptr<Client> DaemonProcess::NewClient() const {
  ClientOptions options;
  options.socket = socket_;
  options.timeout = std::chrono::seconds(60);
  return Client::Create(options);
}

int Run(const std::vector<std::string>& args, std::string* out, std::string* err) {
  int out_pipe[2], err_pipe[2];
  REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err_pipe, O_CLOEXEC) == 0);
  auto argv = Argv(args);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  // Drain stderr on a thread so that neither pipe can fill and block.
  std::string err_text;
  std::thread err_reader([&] { err_text = ReadAll(err_pipe[0]); });
  std::string out_text = ReadAll(out_pipe[0]);
  err_reader.join();
  ::close(out_pipe[0]);
  ::close(err_pipe[0]);
  int status;
  ::waitpid(pid, &status, 0);
  if (out) *out = out_text;
  if (err) *err = err_text;
  return ExitStatus(status);
}

Child::Child(const std::vector<std::string>& args) {
  int in_pipe[2], out_pipe[2];
  REQUIRE(::pipe2(in_pipe, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out_pipe, O_CLOEXEC) == 0);
  auto argv = Argv(args);
  pid_ = ::fork();
  REQUIRE(pid_ >= 0);
  if (pid_ == 0) {
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  stdin_ = in_pipe[1];
  stdout_ = ::fdopen(out_pipe[0], "r");
}

Child::~Child() {
  if (pid_ > 0) Finish();
}

std::string Child::ReadLine() {
  char* line = nullptr;
  size_t cap = 0;
  ssize_t n = ::getline(&line, &cap, stdout_);
  std::string result = n > 0 ? std::string(line, static_cast<size_t>(n)) : "";
  std::free(line);
  return result;
}

int Child::Finish() {
  if (stdin_ >= 0) ::close(stdin_);
  stdin_ = -1;
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  if (stdout_) std::fclose(stdout_);
  stdout_ = nullptr;
  return ExitStatus(status);
}

int64_t SmapsRollup(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      return std::stoll(line.substr(field.size() + 1)) * 1024;
    }
  }
  return -1;
}

TestModel MakeModel(int tensors, size_t floats_each, uint32_t seed) {
  TestModel model;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  model.buffers.resize(static_cast<size_t>(tensors));
  model.source.manifest.set_format("test");
  for (int i = 0; i < tensors; ++i) {
    auto& buffer = model.buffers[static_cast<size_t>(i)];
    buffer.resize(floats_each);
    for (auto& f : buffer) f = dist(rng);
    model.source.manifest.add_storages()->set_size(floats_each * sizeof(float));
    auto* t = model.source.manifest.add_tensors();
    t->set_name("layer." + std::to_string(i) + ".weight");
    t->set_storage(static_cast<uint32_t>(i));
    t->set_dtype(v1::F32);
    t->add_shape(static_cast<int64_t>(floats_each));
    model.source.storage_data.push_back(buffer.data());
  }
  return model;
}

void WriteSafetensors(const TestModel& model, const std::string& path) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& t : model.source.manifest.tensors()) {
    uint64_t size = model.buffers[t.storage()].size() * sizeof(float);
    header[t.name()] = {
        {"dtype", "F32"}, {"shape", {model.buffers[t.storage()].size()}}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string text = header.dump();
  uint64_t n = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text;
  for (const auto& t : model.source.manifest.tensors()) {
    const auto& b = model.buffers[t.storage()];
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size() * sizeof(float)));
  }
  REQUIRE(out.good());
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace zerocopy::testing
