#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "commands.h"

namespace zerocopy::cli {

std::shared_ptr<Client> Globals::client() const {
  ClientOptions options;
  options.socket = socket;
  return Client::Create(options);
}

int Fail(const Globals& globals, const absl::Status& status) {
  std::string message(status.message());
  std::string code = absl::StatusCodeToString(status.code());
  if (globals.json) {
    std::printf("%s\n", nlohmann::json{{"error", message}, {"code", code}}.dump().c_str());
  }
  std::fprintf(stderr, "zerocopy: %s\n", message.c_str());
  return 1;
}

void PrintJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  std::printf("%s", out.c_str());
}

std::string HumanTime(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string OriginText(const v1::Origin& origin) {
  if (origin.kind().empty()) return "-";
  std::string text = origin.kind();
  if (!origin.source().empty()) text += (origin.kind() == "pulled" ? " from " : " ") + origin.source();
  if (origin.duration_ms() > 0) text += absl::StrFormat(" in %.2f s", origin.duration_ms() / 1000.0);
  return text;
}

}  // namespace zerocopy::cli
