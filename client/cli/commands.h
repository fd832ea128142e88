// The zerocopy CLI's commands. Each family registers its subcommands on the
// app; a command's callback stores the process exit status.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include <google/protobuf/message.h>
#include "zerocopy/byte_size.h"
#include "zerocopy/client.h"

namespace zerocopy::cli {

struct Globals {
  char** argv = nullptr;  // the process's, to hand a TorchScript preload to zerocopy-torchscript
  std::string socket;     // "" resolves like the client library does
  bool json = false;
  int exit_code = 0;
  std::shared_ptr<Client> client() const;
};

// preload, ls, inspect, rm, verify, tag, pin, unpin
void AddModelCommands(CLI::App& app, Globals& globals);
// stats, doctor
void AddAdminCommands(CLI::App& app, Globals& globals);

// Prints "zerocopy: <message>" on stderr (or {"error": ...} with --json)
// and returns 1.
int Fail(const Globals& globals, const absl::Status& status);
// The message as JSON (--json) on stdout.
void PrintJson(const google::protobuf::Message& message);
std::string HumanTime(int64_t unix_ms);
// "pulled from node 5f3c... in 1.20 s", "preloaded /models/m.safetensors",
// "published", or "-" for a model committed before origins were kept.
std::string OriginText(const v1::Origin& origin);

}  // namespace zerocopy::cli
