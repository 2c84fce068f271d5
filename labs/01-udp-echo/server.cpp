// 01-udp-echo server: receives datagrams and sends each one back to whoever sent it.
//
// UDP has no connections: one socket serves every client, and each recvfrom() tells us
// who sent the datagram, so that sendto() can answer exactly that address.
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9901;
// Larger than any UDP payload (65507 bytes over IPv4, 65527 over IPv6), so no datagram
// is ever cut short. recvfrom() silently drops what does not fit in the buffer.
constexpr std::size_t kBufferSize = 65536;

constexpr const char* kUsage = R"(usage: server [--host ADDR] [--port N] [--quiet]
       server [PORT]
UDP echo server: sends every datagram back to its sender.
  -H, --host ADDR   address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N      port to bind (default 9901; 0 lets the kernel choose)
      --quiet       no log line per datagram
      --help        this text
)";

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);
    const lab::Log log(quiet);

    lab::handle_signals();

    // BEGIN SOLUTION: create the socket with socket() (local.family(), SOCK_DGRAM) and
    //   bind() it to `local`; report a failure with lab::die("socket"/"bind", ...)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 01: socket() and bind()");
    // 1. socket(): a datagram socket of the address's family, IPv4 or IPv6.
    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): the address clients send to. With port 0 the kernel picks a free port.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // END SOLUTION
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    // 3. recvfrom() and sendto(): one datagram in, the same bytes back out.
    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        // BEGIN SOLUTION: receive one datagram with recvfrom() (retry on EINTR), log
        //   "from ADDR: N bytes", and send the same N bytes back to the sender with sendto()
        lab::Endpoint peer;  // filled in by recvfrom: who sent this datagram
        const ssize_t n =
            recvfrom(sock.get(), buffer.data(), buffer.size(), 0, peer.addr(), &peer.size);
        if (n == -1) {
            if (errno != EINTR) lab::warn("recvfrom", lab::format_address(*bound));
            continue;  // EINTR: a signal; the loop condition looks at the stop flag
        }
        // n may be 0: an empty datagram is a real message in UDP, not an end of anything.
        log("from ", lab::format_address(peer), ": ", n, " bytes");
        if (sendto(sock.get(), buffer.data(), static_cast<std::size_t>(n), 0, peer.addr(),
                   peer.size) == -1) {
            // One client's trouble (say, a full buffer) is reported and the server goes on.
            lab::warn("sendto", lab::format_address(peer));
        }
        // END SOLUTION
    }

    // 4. close(): the Fd does it as main returns.
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
