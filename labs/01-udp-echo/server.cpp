// 01-udp-echo server: receives datagrams and sends each one back to whoever sent it.
//
// UDP has no connections: one socket serves every client, and each recvfrom() says who
// sent the datagram, so that sendto() can answer exactly that address. The steps are
// those of note 000: 1. socket(), 2. bind(), 3. recvfrom() and sendto(), 4. close().
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/01-udp-echo/address.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9901;
// Larger than any UDP payload (65507 bytes over IPv4, 65527 over IPv6), so no datagram
// is cut short: recvfrom() silently drops whatever does not fit in the buffer.
constexpr std::size_t kBufferSize = 65536;

constexpr const char* kUsage = R"(usage: server [--host ADDR] [--port N] [--quiet]
       server [PORT]
UDP echo server: sends every datagram back to its sender.
  -H, --host ADDR   IPv4 or IPv6 address to bind (default 127.0.0.1; 0.0.0.0 or :: for all)
  -p, --port N      port to bind (default 9901; 0 lets the kernel choose)
      --quiet       no log line per datagram
      --help        this text
Stops on SIGINT or SIGTERM.
)";

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const auto local = addr::from_text(args.host(), args.port());  // address.hpp
    if (!local) args.usage_error(addr::refusal(args.host()));
    const lab::Log log(quiet);

    // SIGINT and SIGTERM set a flag and interrupt the call we block in (no SA_RESTART):
    // recvfrom() returns -1 with errno EINTR, and the loop below sees the flag.
    lab::handle_signals();

    // 1. socket(): a datagram socket of the address's family, IPv4 or IPv6.
    const lab::Fd sock(socket(local->family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): the address clients send to. With port 0 the kernel picks a free port,
    //    and getsockname() reads back which one, for the ready line.
    // TASK 01.bind
    if (bind(sock.get(), local->addr(), local->size) == -1) {
        lab::die("bind", addr::to_text(*local));
    }
    // END TASK
    lab::Endpoint bound;
    if (getsockname(sock.get(), bound.addr(), &bound.size) == -1) lab::die("getsockname");
    lab::print_ready("udp", addr::to_text(bound));

    // 3. recvfrom() and sendto(): one datagram in, the same bytes back out. recvfrom()
    //    also fills in who sent it, the only address a reply can go to. A datagram may be
    //    empty: in UDP that is a message, not an end. A failed call concerns one datagram
    //    (logged; the loop goes on), and EINTR goes back to the loop's test, which looks
    //    at the stop flag each time round, before the next blocking call.
    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        // TASK 01.echo
        lab::Endpoint peer;
        const ssize_t n =
            recvfrom(sock.get(), buffer.data(), buffer.size(), 0, peer.addr(), &peer.size);
        if (n == -1) {
            if (errno != EINTR) lab::warn("recvfrom", addr::to_text(bound));
            continue;
        }
        log("from ", addr::to_text(peer), ": ", n, " bytes");
        if (sendto(sock.get(), buffer.data(), static_cast<std::size_t>(n), 0, peer.addr(),
                   peer.size) == -1) {
            log("sendto ", addr::to_text(peer), ": ", std::strerror(errno));
        }
        // END TASK
    }

    // 4. close(): the Fd closes the socket as main returns.
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
