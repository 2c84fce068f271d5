// 02-udp-chat server: a relay. Every datagram a client sends is passed on to every other
// client it knows, as "NAME: TEXT".
//
// UDP gives the server no connections, so it must decide for itself who its clients are
// (anyone who sent something, keyed by full address: IP and port), how long to remember
// them (--idle-timeout), and how much it will send for one datagram it receives
// (--max-clients, --max-message, --rate). chat.hpp makes those decisions; this file does
// the socket calls.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <string>
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
constexpr long long kMaxUdpPayload = 65507;   // IPv4: 65535 - 20 (IP) - 8 (UDP)
constexpr long long kMaxClientsLimit = 1000;  // keeps the /who answer within one datagram

constexpr const char* kUsage = R"(usage: server [--host ADDR] [--port N] [--quiet] [--max-clients N]
              [--idle-timeout SECONDS] [--max-message BYTES] [--rate N]
       server [PORT]
UDP chat relay: sends each client's message to every other client.
  -H, --host ADDR          address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N             port to bind (default 9902; 0 lets the kernel choose)
      --quiet              no log line per event
      --max-clients N      clients remembered at once, 1 to 1000 (default 64)
      --idle-timeout SECONDS  forget a client silent this long (default 300)
      --max-message BYTES  longest datagram relayed, 1 to 65507 (default 1024)
      --rate N             datagrams a second one client may send (default 20)
      --help               this text
Commands a client may send: /join, /nick NAME, /who, /quit; anything else is relayed.
)";

using chat::Clock;

// How long poll() may sleep: until the next client would be forgotten, or for ever.
int poll_timeout_ms(const chat::Room& room) {
    const auto expiry = room.next_expiry();
    if (!expiry) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(*expiry - Clock::now());
    return static_cast<int>(std::clamp<long long>(left.count(), 0, INT_MAX));
}

// Sends what the Room decided. One unreachable client must not stop the others getting
// theirs, so a failed sendto() is reported and the loop goes on.
void deliver(int sock, const chat::Outcome& outcome, const lab::Log& log) {
    for (const std::string& line : outcome.log)
        log(line);
    for (const chat::Send& send : outcome.sends) {
        for (const lab::Endpoint& to : send.to) {
            if (sendto(sock, send.bytes.data(), send.bytes.size(), 0, to.addr(), to.size) == -1) {
                lab::warn("sendto", lab::format_address(to));
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    long long max_clients = 64;
    long long max_message = 1024;
    long long rate = 20;
    double idle_seconds = 300;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.flag("--quiet", &quiet);
    args.option("--max-clients", &max_clients, 1, kMaxClientsLimit);
    args.seconds("--idle-timeout", &idle_seconds);
    args.option("--max-message", &max_message, 1, kMaxUdpPayload);
    args.option("--rate", &rate, 1, 1000000);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_DGRAM);
    const lab::Log log(quiet);

    chat::Limits limits;
    limits.max_clients = static_cast<std::size_t>(max_clients);
    limits.max_message = static_cast<std::size_t>(max_message);
    limits.idle_timeout =
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_seconds));
    limits.rate = rate;
    chat::Room room(limits);

    lab::handle_signals();

    // BEGIN SOLUTION: create the relay's one socket: socket() (local.family(), SOCK_DGRAM)
    //   and bind() it to `local`; on a failure call lab::die("socket"/"bind", address,
    //   errno)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 02: socket() and bind()");
    // 1. socket(): one datagram socket serves every client.
    const lab::Fd sock(socket(local.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): the address every client sends to.
    if (bind(sock.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // END SOLUTION
    const auto bound = lab::local_endpoint(sock.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("udp", *bound);

    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        // BEGIN SOLUTION: poll() and recvfrom() one datagram, then let the Room decide: poll()
        //   sock (POLLIN) for at most poll_timeout_ms(room) ms (lab::die("poll", ...) on
        //   any error but EINTR); when it is readable, recvfrom() the datagram into `buffer`
        //   and its sender into a lab::Endpoint (lab::warn("recvfrom", ...) on any
        //   error but EINTR), and pass the bytes and sender to
        //   deliver(sock.get(), room.receive(peer, bytes, Clock::now()), log)
        // 3. poll(): wait for a datagram, but wake up in time to forget idle clients.
        pollfd ready{sock.get(), POLLIN, 0};
        const int n_ready = poll(&ready, 1, poll_timeout_ms(room));
        if (n_ready == -1 && errno != EINTR) lab::die("poll");
        if (n_ready == 1) {
            // 4. recvfrom(): the datagram, and who sent it. The sender's address is the
            //    only identity a UDP client has.
            lab::Endpoint peer;
            const ssize_t n =
                recvfrom(sock.get(), buffer.data(), buffer.size(), 0, peer.addr(), &peer.size);
            if (n == -1 && errno != EINTR) {
                lab::warn("recvfrom", lab::format_address(*bound));
            }
            if (n >= 0) {
                // 5. sendto() each copy: one datagram in, up to max-clients - 1 out.
                const std::string_view bytes(buffer.data(), static_cast<std::size_t>(n));
                deliver(sock.get(), room.receive(peer, bytes, Clock::now()), log);
            }
        }
        // END SOLUTION
        deliver(sock.get(), room.expire(Clock::now()), log);
    }

    // 6. close(): the Fd does it as main returns.
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
