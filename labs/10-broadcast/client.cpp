// 10-broadcast client (the receiver): binds a port and prints every datagram that
// arrives on it, broadcast or not, one per line.
//
// A receiver of broadcasts must bind the wildcard address 0.0.0.0 (or the broadcast
// address itself): a datagram sent to 127.255.255.255 is not addressed to 127.0.0.1, so a
// socket bound to 127.0.0.1 never sees it. SO_REUSEADDR lets several receivers on one
// host share the port, and the kernel gives each of them its own copy of a broadcast.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9910;
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

// Blocks SIGINT and SIGTERM except while ppoll() waits, so a stop request can never slip
// in between checking the flag and starting to wait. Returns the mask ppoll() should use.
}  // namespace

int main(int argc, char** argv) {
    long long count = 0;
    lab::Args args(kUsage);
    args.host_port("0.0.0.0", kDefaultPort, lab::Positionals::kHostPort);
    args.option("--count", &count, 0, 1'000'000'000);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);

    lab::handle_signals();
    sigset_t while_waiting;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &while_waiting);

    // BEGIN SOLUTION: create a datagram socket with socket() (local.family(), SOCK_DGRAM),
    //   turn SO_REUSEADDR on with setsockopt() before bind(), and bind() it to `local`
    //   (the wildcard address and the port); report failures with lab::die()
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 10: socket(), SO_REUSEADDR, bind()");
    // 1. socket(): a datagram socket; a broadcast is one datagram delivered to many.
    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. setsockopt(SO_REUSEADDR) before bind(): every receiver on this host that sets
    //    it may bind the same port, and each gets a copy of every broadcast.
    const int on = 1;
    if (setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }

    // 3. bind(): the port the sender sends to, on the wildcard address.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // END SOLUTION
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    // 4. recvfrom(): wait in ppoll() (where a stop signal can land), then take one
    //    datagram and print exactly its bytes. Nothing is sent back: no replies here.
    std::vector<char> buffer(kBufferSize);
    for (long long received = 0; count == 0 || received < count;) {
        pollfd readable{sock.get(), POLLIN, 0};
        if (ppoll(&readable, 1, nullptr, &while_waiting) == -1) {
            if (errno == EINTR && lab::stop_requested()) break;
            if (errno == EINTR) continue;
            lab::die("ppoll", lab::format_address(*bound));
        }
        const ssize_t n = recvfrom(sock.get(), buffer.data(), buffer.size(), 0, nullptr, nullptr);
        if (n == -1) lab::die("recvfrom", lab::format_address(*bound));
        lab::print_payload({buffer.data(), static_cast<std::size_t>(n)});
        ++received;
    }

    // 5. close(): the Fd does it as main returns.
    return lab::kExitOk;
}
