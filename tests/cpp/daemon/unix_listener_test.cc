// UnixListener: only connections that send the HTTP/2 client preface are
// handed over; the rest are closed, and refused ones at once.
#include "unix_listener.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include <catch2/catch.hpp>

#include "support.h"

namespace zerocopy::daemon {
namespace {

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

UniqueFd Connect(const std::string& path, const std::string& send) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  if (!send.empty())
    REQUIRE(::send(fd.get(), send.data(), send.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(send.size()));
  return fd;
}

// Whether the listener closed our connection within `wait`.
bool ClosedWithin(const UniqueFd& fd, std::chrono::milliseconds wait) {
  pollfd p{fd.get(), POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return false;
  char c;
  const ssize_t n = ::recv(fd.get(), &c, 1, MSG_DONTWAIT);
  // ECONNRESET: it closed with our bytes unread.
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

struct Listening {
  testing::TempDir dir;
  std::unique_ptr<UnixListener> listener;
  std::string path;
  Listening() {
    path = dir.path() + "/s.sock";
    auto l = UnixListener::Bind(path, 0600, static_cast<gid_t>(-1));
    REQUIRE(l.ok());
    listener = std::move(*l);
  }
};

TEST_CASE("a connection is handed over once its preface is all there, unread", "[listener]") {
  Listening l;
  auto admit_all = [](int) { return true; };
  // The preface in two parts, the second a little later.
  std::thread client([&] {
    UniqueFd fd = Connect(l.path, std::string(kPreface, 10));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::send(fd.get(), kPreface + 10, std::strlen(kPreface) - 10, MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  });
  auto fd = l.listener->Accept(admit_all, std::chrono::seconds(10));
  REQUIRE(fd.ok());
  char head[sizeof kPreface - 1];
  REQUIRE(::recv(fd->get(), head, sizeof head, 0) == static_cast<ssize_t>(sizeof head));  // still there for gRPC
  CHECK(std::memcmp(head, kPreface, sizeof head) == 0);
  client.join();
}

TEST_CASE("half a preface, or something else, is closed; a refused connection at once", "[listener]") {
  Listening l;
  int admitted = 0;
  auto admit = [&](int) { return ++admitted != 3; };  // the third is refused
  UniqueFd half = Connect(l.path, "PRI * HTTP/2.0\r\n");
  UniqueFd junk = Connect(l.path, "GET / HTTP/1.1\r\n\r\n");
  UniqueFd refused = Connect(l.path, kPreface);
  UniqueFd good = Connect(l.path, kPreface);
  auto first = l.listener->Accept(admit, std::chrono::milliseconds(300));
  REQUIRE(first.ok());  // `good`, the only one handed over
  CHECK(ClosedWithin(junk, std::chrono::seconds(5)));
  CHECK(ClosedWithin(refused, std::chrono::seconds(5)));
  // The half one is closed by the next Accept, once its 300 ms are up.
  absl::Status second;
  std::thread accepting([&] { second = l.listener->Accept(admit, std::chrono::milliseconds(300)).status(); });
  CHECK(ClosedWithin(half, std::chrono::seconds(5)));
  l.listener->Stop();
  accepting.join();
  CHECK(absl::IsCancelled(second));
  CHECK(admitted == 4);
}

}  // namespace
}  // namespace zerocopy::daemon
