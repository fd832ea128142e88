// zerocopy: the command line for operators of zerocopyd. Parses model files
// in this process, with the caller's permissions, and talks to the daemon
// through the same client library as any other process.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "commands.h"

int main(int argc, char** argv) {
  zerocopy::cli::Globals globals;
  globals.argv = argv;
  CLI::App app{"zerocopy: preload, list, inspect and remove the models that zerocopyd shares on this node"};
  app.require_subcommand(1);
  app.fallthrough();  // --json and --socket also after the command
  app.add_option("--socket", globals.socket,
                 "zerocopyd's socket (default: $ZEROCOPY_SOCKET, then the daemon's default)");
  app.add_flag("--json", globals.json, "print JSON instead of text");
  app.set_version_flag("--version", "zerocopy " ZEROCOPY_VERSION);
  zerocopy::cli::AddModelCommands(app, globals);
  zerocopy::cli::AddAdminCommands(app, globals);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0) {
      std::fprintf(stderr, "zerocopy: %s\n", e.what());
      if (argc <= 1) std::fprintf(stderr, "%s", app.help().c_str());
      return 2;
    }
    return app.exit(e);
  }
  // Done: what it printed is flushed, and nothing is left to the daemon (a
  // commit has been answered; a session's leases end with its connection).
  // Exiting at once skips joining gRPC's and the copy's threads and
  // unmapping a preloaded file one call at a time: ~20 ms of a preload.
  // Sanitizer builds exit normally: their leak and race checks run at exit.
  // Output that could not be written (a full disk under `stats
  // --prometheus > file`) is a failure, not a truncated success.
  int code = globals.exit_code;
  if (std::fflush(nullptr) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "zerocopy: writing the output failed: %s\n", std::strerror(errno));
    if (code == 0) code = 1;
  }
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  std::_Exit(code);
#else
  return code;
#endif
}
