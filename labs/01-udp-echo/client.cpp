// 01-udp-echo client: sends each line of standard input as one datagram and prints the
// reply. It waits for each reply at most --timeout seconds, because UDP promises nothing:
// a lost datagram, or no server at all, would otherwise leave it waiting forever.
//
// --connect uses connect() + send() + recv() instead of sendto() + recvfrom(). A
// connected UDP socket only talks to one peer, and it is told about ICMP errors: sending
// to a port where nothing listens then fails at once with "Connection refused".
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9901;
constexpr std::size_t kBufferSize = 65536;  // larger than any UDP payload

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS] [--connect]
       client [HOST [PORT]]
UDP echo client: sends each line of stdin as one datagram, prints each reply.
  -H, --host ADDR      server address (default 127.0.0.1)
  -p, --port N         server port (default 9901)
      --timeout SECONDS  how long to wait for each reply (default 2)
      --connect        connect() the socket and use send()/recv()
      --help           this text
)";

using Clock = std::chrono::steady_clock;

// Waits until the socket is readable or the deadline passes. poll() is the portable way
// to put a time limit on a blocking recv.
bool wait_readable(int fd, Clock::time_point deadline) {
    for (;;) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd, POLLIN, 0};
        const int ready = poll(&p, 1, static_cast<int>(left.count()));
        if (ready > 0) return true;
        if (ready == -1 && errno != EINTR) return false;
        if (lab::stop_requested()) return false;
    }
}

std::string seconds_text(double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%gs", seconds);
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    double timeout = 2.0;
    bool connected = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.flag("--connect", &connected);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_DGRAM);
    const std::string server_text = lab::format_address(server);

    lab::handle_signals();

    // 1. socket(): no bind() needed; the first send gives the socket an ephemeral port.
    const lab::Fd sock(socket(server.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. (--connect) connect(): sends no packet at all on UDP. It fixes the peer, so
    //    send()/recv() need no address, and datagrams from anyone else are filtered out.
    // BEGIN SOLUTION: connect() the socket to `server` when --connect is given
    if (connected && connect(sock.get(), server.addr(), server.size) == -1) {
        lab::die("connect", server_text);
    }
    // END SOLUTION

    lab::LineReader input(0);
    std::vector<char> reply(kBufferSize);
    while (auto line = input.read_line()) {
        // BEGIN SOLUTION: send the line as one datagram (send() or sendto()), wait for the
        //   reply with wait_readable() until the deadline, receive it (recv() or
        //   recvfrom(), ignoring strangers) and print it with lab::print_payload()
        // 3. One line, without its newline, is one datagram.
        const ssize_t sent = connected ? send(sock.get(), line->data(), line->size(), 0)
                                       : sendto(sock.get(), line->data(), line->size(), 0,
                                                server.addr(), server.size);
        if (sent == -1) lab::die(connected ? "send" : "sendto", server_text);

        // 4. Wait for the reply, but not forever.
        const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(timeout));
        for (;;) {
            if (!wait_readable(sock.get(), deadline)) {
                if (lab::stop_requested()) return lab::kExitFailure;
                lab::fatal("no reply from " + server_text + " within " + seconds_text(timeout));
            }
            lab::Endpoint from;
            const ssize_t n = connected ? recv(sock.get(), reply.data(), reply.size(), 0)
                                        : recvfrom(sock.get(), reply.data(), reply.size(), 0,
                                                   from.addr(), &from.size);
            if (n == -1) {
                if (errno == EINTR) continue;
                // On a connected socket, ECONNREFUSED here is the ICMP "port unreachable"
                // the kernel received for our datagram: nobody listens on that port.
                lab::die(connected ? "recv" : "recvfrom", server_text);
            }
            // An unconnected socket accepts datagrams from anyone: ignore strangers.
            if (!connected && !(from == server)) continue;
            lab::print_payload({reply.data(), static_cast<std::size_t>(n)});
            break;
        }
        // END SOLUTION
    }
    if (errno != 0) lab::die("read", "stdin");
    return lab::kExitOk;
}
