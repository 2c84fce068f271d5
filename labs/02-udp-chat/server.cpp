// 02-udp-chat server: a relay. Each line a member sends is passed on to every other
// member, as "NAME: TEXT".
//
// UDP gives the server no connections, so it decides for itself who its members are
// (addresses that proved they receive what is sent to them), how long to remember them
// (--idle-timeout), and how much it sends because of one datagram (--max-clients,
// --max-message, --rate). chat.hpp makes those decisions; this file makes the calls.
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/02-udp-chat/chat.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9902;
// Larger than any UDP payload, so recvfrom() reports an oversized datagram's real size
// instead of cutting it short.
constexpr std::size_t kBufferSize = 65536;
// Each option's default and ceiling. A name is at most 70 bytes (a nick 16, an address such
// as "[v6%scope]:port" 69), so under these ceilings a relayed "NAME: TEXT\n" and the list
// /who sends always fit in one UDP datagram (65507 bytes over IPv4).
constexpr long long kDefaultMaxClients = 64, kMaxClientsLimit = 500;
constexpr long long kDefaultMaxMessage = 1024, kMaxMessageLimit = 65000;  // bytes
constexpr long long kDefaultRate = 20, kRateLimit = 1'000'000;            // datagrams a second
constexpr double kDefaultIdleSeconds = 60;

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--quiet] [--max-clients N]
              [--idle-timeout SECONDS] [--max-message BYTES] [--rate N]
       server [PORT]
UDP chat relay: sends each member's line to every other member.
  -H, --host ADDR          address to bind (default 127.0.0.1; 0.0.0.0 or :: for all)
  -p, --port N             port to bind (default 9902; 0 lets the kernel choose)
      --quiet              no log line per event
      --max-clients N      members at once, 1 to 500 (default 64)
      --idle-timeout SECONDS  forget a member silent this long (default 60)
      --max-message BYTES  longest line relayed, 1 to 65000 (default 1024)
      --rate N             datagrams a second one member may send (default 20)
      --help               this text
To join, send a line of 5 bytes or more, then the line it is answered with (/join COOKIE).
Members may send /nick NAME, /who, /quit; anything else is relayed.
)";

using chat::Clock;

int wait_ms(const chat::Room& room);

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    chat::Limits limits{kDefaultMaxClients, kDefaultMaxMessage, kDefaultRate, kDefaultIdleSeconds};
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.flag("--quiet", &quiet);
    args.option("--max-clients", &limits.max_clients, 1, kMaxClientsLimit);
    args.seconds("--idle-timeout", &limits.idle_seconds);
    args.option("--max-message", &limits.max_message, 1, kMaxMessageLimit);
    args.option("--rate", &limits.rate, 1, kRateLimit);
    args.parse(argc, argv);
    // Lab 01 built its addresses by hand; from here on common/ does it (endpoint.hpp).
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);
    const lab::Log log(quiet);
    chat::Room room(limits);
    lab::handle_signals();  // a stop signal interrupts poll() with EINTR, as in lab 01

    // 1. socket(): one datagram socket serves every member.
    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): the address every member sends to.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        // 3. poll(): sleep until the first of three kinds of event: a datagram, a deadline
        //    (the member heard from longest ago has been silent for --idle-timeout), or a
        //    stop signal (poll() fails with EINTR, and the loop's test sees the flag).
        pollfd ready{sock.get(), POLLIN, 0};
        if (poll(&ready, 1, wait_ms(room)) == -1 && errno != EINTR) lab::die("poll");

        // 4. The deadline: the Room forgets whoever has been silent too long.
        chat::Outcome out;
        room.expire(Clock::now(), out);

        // 5. recvfrom(): the datagram and its sender, whose address is the only identity
        //    a UDP client has; the Room decides what it means. MSG_DONTWAIT, because
        //    poll() may announce a datagram that is then dropped (a bad checksum).
        // TASK 02.receive
        if ((ready.revents & POLLIN) != 0) {
            lab::Endpoint peer;
            const ssize_t n = recvfrom(sock.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                       peer.addr(), &peer.size);
            if (n >= 0) {
                const std::string_view bytes(buffer.data(), static_cast<std::size_t>(n));
                room.receive(peer, bytes, Clock::now(), out);
            } else if (errno != EINTR && errno != EAGAIN) {
                lab::warn("recvfrom", lab::format_address(*bound));
            }
        }
        // END TASK

        // 6. sendto() every copy the Room asked for: one datagram in, up to --max-clients
        //    out. A copy that fails concerns one member: it is logged, the others still
        //    get theirs. A member that vanished or never reads costs nothing more: the
        //    datagram is dropped on the way, and an unconnected socket is not told.
        for (const std::string& line : out.log) {
            log(line);
        }
        for (const chat::Send& send : out.sends) {
            for (const lab::Endpoint& to : send.to) {
                // TASK 02.send
                if (sendto(sock.get(), send.bytes.data(), send.bytes.size(), 0, to.addr(),
                           to.size) == -1) {
                    log("sendto ", lab::format_address(to), ": ", std::strerror(errno));
                }
                // END TASK
            }
        }
    }

    // 7. close(): the Fd closes the socket as main returns.
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

// How long poll() may sleep, in milliseconds: until the member heard from longest ago is
// to be forgotten (rounded up, so never a busy 0), or for ever (-1) in an empty room.
int wait_ms(const chat::Room& room) {
    const auto left = room.seconds_left(Clock::now());
    return left ? lab::to_milliseconds(*left) : -1;
}

}  // namespace
