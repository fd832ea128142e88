// Test support: a real zerocopyd on a temporary socket and segment
// directory, child processes with captured output, test models, and
// memory readings from /proc.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "zerocopy/client.h"
#include "zerocopy/model_source.h"

namespace zerocopy::testing {

// Paths of the built programs (compile definitions from CMake).
std::string DaemonBinary();
std::string CliBinary();
std::string MapWorkerBinary();

// A fresh directory under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& base = "/tmp");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A tmpfs of `size` mounted for the test (needs root: the suite runs as
// root), unmounted by the destructor; path() is a segment directory in it
// that does not exist yet.
class Tmpfs {
 public:
  explicit Tmpfs(const std::string& size, const std::string& extra = "");
  ~Tmpfs();
  Tmpfs(const Tmpfs&) = delete;
  std::string path() const { return dir_.path() + "/segments"; }

 private:
  TempDir dir_;
};

// zerocopyd started with fork/exec on <tmp>/zerocopyd.sock and a segment
// directory in /dev/shm; Start() returns once the socket accepts
// connections. The destructor stops it (SIGTERM, then SIGKILL) and removes
// both directories.
class DaemonProcess {
 public:
  struct Options {
    std::string host_budget = "1G";
    std::string segment_dir;  // "" for a fresh one in /dev/shm
    // Off unless a test asks: suites run many daemons at once, and the
    // default port would be taken by the first.
    std::string metrics_address = "off";
    std::vector<std::string> extra_args;
    std::vector<std::string> env;  // "NAME=value" added to its environment
  };
  DaemonProcess();
  explicit DaemonProcess(Options options);
  ~DaemonProcess();

  void Start();               // REQUIREs that it comes up within 20 s
  int Stop(int signal = 15);  // waits; returns the exit status (128+sig if killed)
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }
  const std::string& segment_dir() const { return segment_dir_; }
  std::string log() const;                // everything it printed
  std::vector<std::string> Args() const;  // its argv without the program
  std::shared_ptr<Client> NewClient() const;
  // The environment of the next Start() ("NAME=value" entries).
  void set_env(std::vector<std::string> env) { options_.env = std::move(env); }

 private:
  Options options_;
  TempDir dir_;
  TempDir shm_;
  std::string socket_;
  std::string segment_dir_;
  pid_t pid_ = -1;
};

// Runs argv to completion; stdout into *out, stderr into *err (if given).
// Returns the exit status (128+signal when killed).
int Run(const std::vector<std::string>& argv, std::string* out = nullptr, std::string* err = nullptr);

// A child whose stdin we hold: map_worker --hold waits for it to close.
class Child {
 public:
  explicit Child(const std::vector<std::string>& argv);
  ~Child();
  std::string ReadLine();  // from its stdout; "" at EOF
  int Finish();            // closes stdin, waits, returns the exit status
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  FILE* stdout_ = nullptr;
};

// A field of /proc/PID/smaps_rollup in bytes ("Pss", "Rss"); -1 if absent.
int64_t SmapsRollup(pid_t pid, const std::string& field);

// A model with owned bytes: `tensors` f32 tensors of `floats_each` floats,
// filled from `seed`, each its own storage.
struct TestModel {
  std::vector<std::vector<float>> buffers;
  ModelSource source;
};
TestModel MakeModel(int tensors, size_t floats_each, uint32_t seed);

// Writes a safetensors file holding the TestModel's tensors.
void WriteSafetensors(const TestModel& model, const std::string& path);

// Names of files in a directory (not . and ..), sorted.
std::vector<std::string> ListDir(const std::string& dir);

// Polls `done` every 10 ms until it returns true or `timeout` has passed
// (for what the daemon does asynchronously: a dead client's session ending,
// a call reaching a failpoint). Returns its last answer.
template <typename Done>
bool WaitUntil(Done done, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

}  // namespace zerocopy::testing
