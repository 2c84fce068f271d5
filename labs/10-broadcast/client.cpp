// 10-broadcast client (the receiver): binds a port and prints every datagram that arrives
// on it, broadcast or not, exactly as it came, one per line. It sends nothing and expects
// no reply, so it has no --timeout: it waits until --count datagrams or a stop signal.
//
// A receiver of broadcasts binds the wildcard address 0.0.0.0 (or the broadcast address
// itself): a datagram sent to 127.255.255.255 is not addressed to 127.0.0.1, so a socket
// bound to 127.0.0.1 never sees it. SO_REUSEADDR lets several receivers on one host share
// the port, and the kernel gives each of them its own copy of every broadcast.
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9910;
constexpr long long kCountLimit = 1'000'000'000;
// Larger than any UDP payload (65507 bytes over IPv4): no datagram is ever cut short.
constexpr std::size_t kBufferSize = 65536;

constexpr const char* kUsage = R"(usage: client [--host ADDR] [--port N] [--count N]
       client [HOST [PORT]]
UDP broadcast receiver: prints each datagram that arrives on PORT, one per line.
  -H, --host ADDR   address to bind (default 0.0.0.0, which broadcasts reach)
  -p, --port N      port to bind (default 9910; 0 lets the kernel choose)
      --count N     exit 0 after N datagrams (default 0: until stopped)
      --help        this text
)";

void print_datagrams(int fd, long long count, const std::string& where);

}  // namespace

int main(int argc, char** argv) {
    long long count = 0;
    lab::Args args(kUsage);
    args.host_port("0.0.0.0", kDefaultPort, lab::Positionals::kHostPort);
    args.option("--count", &count, 0, kCountLimit);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);
    lab::handle_signals();

    // 1. socket(): a datagram socket; a broadcast is one datagram delivered to many.
    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. setsockopt(SO_REUSEADDR), before bind(): every receiver on this host that sets
    //    it may bind the same port, and each gets its own copy of every broadcast.
    const int on = 1;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }

    // 3. bind() the port on the wildcard address, where broadcasts arrive.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    // 4. recvfrom() and print, until --count datagrams or a stop signal.
    print_datagrams(sock.get(), count, lab::format_address(*bound));

    // 5. close(): the Fd closes the socket as main returns.
    return lab::kExitOk;
}

namespace {

// Takes one datagram per recvfrom(), whole, from any sender, and prints exactly its bytes
// and a newline (lab::print_payload): no NUL is assumed, an empty datagram is an empty
// line. Stops after `count` datagrams (0: never) or once a stop signal has come: the
// signal interrupts recvfrom() with EINTR, which goes back to the loop's check. Any other
// failure is fatal: lab::die("recvfrom", where).
void print_datagrams(int fd, long long count, const std::string& where) {
    // TASK 10.receive
    std::vector<char> buffer(kBufferSize);
    for (long long received = 0; !lab::stop_requested() && (count == 0 || received < count);) {
        const ssize_t n = recvfrom(fd, buffer.data(), buffer.size(), 0, nullptr, nullptr);
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the check
        if (n == -1) lab::die("recvfrom", where);
        lab::print_payload({buffer.data(), static_cast<std::size_t>(n)});
        ++received;
    }
    // END TASK
}

}  // namespace
