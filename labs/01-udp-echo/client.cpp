// 01-udp-echo client: sends each line of standard input as one datagram and prints the
// reply, waiting for it at most --timeout seconds. UDP promises nothing: without a time
// limit, one lost datagram (or no server at all) would leave it waiting for ever.
//
// --connect shows the other way to use a UDP socket: connect(), then send() and recv().
// A connected UDP socket talks to one peer only, and hears of ICMP errors: a datagram to
// a port where nothing listens makes the next recv() fail with "Connection refused".
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/01-udp-echo/address.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9901;
constexpr std::size_t kBufferSize = 65536;  // larger than any UDP payload
constexpr double kDefaultTimeout = 2;       // seconds

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS] [--connect]
       client [HOST [PORT]]
UDP echo client: sends each line of stdin as one datagram, prints each reply.
  -H, --host ADDR        server's IPv4 or IPv6 address (default 127.0.0.1)
  -p, --port N           server's port (default 9901)
      --timeout SECONDS  how long to wait for each reply (default 2)
      --connect          connect() the socket, then send() and recv()
      --help             this text
)";

// What every exchange needs: the socket, where the server is, and how long to wait.
struct Exchange {
    int sock;
    lab::Endpoint server;
    std::string server_text;
    bool connected;
    double timeout;
    std::vector<char> reply = std::vector<char>(kBufferSize);  // one datagram, any size
};

void ask(Exchange& ex, std::string_view line);  // steps 4 and 5, after main

}  // namespace

int main(int argc, char** argv) {
    double timeout = kDefaultTimeout;
    bool connected = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.flag("--connect", &connected);
    args.parse(argc, argv);
    const auto server = addr::from_text(args.host(), args.port());  // address.hpp
    if (!server) args.usage_error(addr::refusal(args.host()));

    // Ctrl-C (SIGINT) or SIGTERM interrupts a wait on stdin or on the socket: stop there.
    lab::handle_signals();

    // 1. socket(): no bind(); the first datagram sent gives it an ephemeral port.
    const lab::Fd sock(socket(server->family(), SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    Exchange ex{sock.get(), *server, addr::to_text(*server), connected, timeout};

    // 2. --connect: connect() sends nothing on UDP. It fixes the one peer, so send() and
    //    recv() need no address, and the kernel drops datagrams from anyone else.
    // TASK 01.connect
    if (connected && connect(sock.get(), server->addr(), server->size) == -1) {
        lab::die("connect", ex.server_text);
    }
    // END TASK

    // 3. One line, one datagram, one reply, and only then the next line: stop and wait.
    lab::LineReader input(STDIN_FILENO);
    while (!lab::stop_requested()) {
        const auto line = input.read_line();
        if (!line) break;
        ask(ex, *line);
    }
    // read_line() ends at end of input (errno 0), on a stop signal (EINTR), or on an error.
    // Stopped before the end of its input, the client did not finish: exit status 1.
    if (errno != 0 && !lab::stop_requested()) lab::die("read", "stdin");
    return lab::stop_requested() ? lab::kExitFailure : lab::kExitOk;
}

namespace {

// 4. send() or sendto(): `line`, without its '\n', as one datagram, its boundaries kept;
//    send() on a connected socket, sendto() to ex.server otherwise.
// 5. recv() or recvfrom(): the reply, awaited at most ex.timeout seconds and printed with
//    lab::print_payload(). An unconnected socket takes datagrams from anyone: one from
//    another address is not the reply. No reply in time, or a failed call, exits 1 (on a
//    connected socket recv() reports the ICMP "port unreachable" as ECONNREFUSED); a stop
//    signal ends the wait early.
void ask(Exchange& ex, std::string_view line) {
    // TASK 01.ask
    const ssize_t sent = ex.connected ? send(ex.sock, line.data(), line.size(), 0)
                                      : sendto(ex.sock, line.data(), line.size(), 0,
                                               ex.server.addr(), ex.server.size);
    if (sent == -1) lab::die(ex.connected ? "send" : "sendto", ex.server_text);

    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + std::chrono::duration<double>(ex.timeout);
    for (;;) {
        const std::chrono::duration<double> left = deadline - Clock::now();
        if (!lab::wait_readable(ex.sock, left.count())) break;  // timed out, or stopped
        lab::Endpoint sender;
        const ssize_t n = ex.connected ? recv(ex.sock, ex.reply.data(), ex.reply.size(), 0)
                                       : recvfrom(ex.sock, ex.reply.data(), ex.reply.size(), 0,
                                                  sender.addr(), &sender.size);
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) lab::die(ex.connected ? "recv" : "recvfrom", ex.server_text);
        if (!ex.connected && sender != ex.server) continue;
        lab::print_payload({ex.reply.data(), static_cast<std::size_t>(n)});
        return;
    }
    if (!lab::stop_requested()) {
        lab::fatal("no reply from " + ex.server_text + " within " + lab::seconds_text(ex.timeout));
    }
    // END TASK
}

}  // namespace
