// 03-tcp-echo client, also the client of labs 04, 05, 07, 08 and 09: their servers differ,
// the protocol does not. Each of those labs' client.cpp sets its default port and
// includes this file.
//
// It sends each line of standard input with its newline and then reads until it has got
// back as many bytes as it has sent. A stream has no message boundaries: one write() may
// arrive as several read()s, or two writes as one read, so the client counts bytes
// instead of trusting any single read.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
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

#ifndef LAB_DEFAULT_PORT
#define LAB_DEFAULT_PORT 9903
#endif

namespace {

constexpr std::uint16_t kDefaultPort = LAB_DEFAULT_PORT;
// Bytes per read(): how much arrives at once is the network's business, not ours.
constexpr std::size_t kBufferSize = 16384;

std::string usage() {
    return "usage: client [--host ADDR] [--port N]\n"
           "       client [HOST [PORT]]\n"
           "TCP echo client: sends each line of stdin, prints what comes back.\n"
           "  -H, --host ADDR   server address (default 127.0.0.1)\n"
           "  -p, --port N      server port (default " +
           std::to_string(kDefaultPort) +
           ")\n"
           "      --help        this text\n";
}

}  // namespace

int main(int argc, char** argv) {
    lab::Args args(usage());
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    const std::string server_text = lab::format_address(server);

    std::signal(SIGPIPE, SIG_IGN);  // a vanished peer makes write() fail with EPIPE

    // 1. socket() and 2. connect(): the three-way handshake happens here.
    // BEGIN SOLUTION: connect to the server: socket() (server.family(), SOCK_STREAM) and
    //   connect() it to `server`; on a failure call lab::die("socket"/"connect",
    //   server_text)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 03: socket() and connect()");
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    // No retry on EINTR: an interrupted connect() goes on in the background, and calling
    // it again fails with EALREADY. No handler is installed here, so it cannot happen.
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        lab::die("connect", server_text);
    }
    // END SOLUTION

    // 3. Send a line, then read until the echo has caught up with what was sent. The
    //    totals run over the whole connection, so bytes that arrive early or late are
    //    never lost between lines.
    lab::LineReader input(STDIN_FILENO);
    unsigned long long sent = 0;
    unsigned long long received = 0;
    std::vector<char> buffer(kBufferSize);
    // Reads once and prints what came; false at end of stream.
    const auto read_some = [&]() -> bool {
        for (;;) {
            const ssize_t n = read(sock.get(), buffer.data(), buffer.size());
            if (n == -1 && errno == EINTR) continue;
            if (n == -1) lab::die("read", server_text);
            std::fwrite(buffer.data(), 1, static_cast<std::size_t>(n), stdout);
            std::fflush(stdout);
            received += static_cast<unsigned long long>(n);
            return n > 0;
        }
    };
    while (auto line = input.read_line()) {
        line->push_back('\n');
        if (!lab::write_all(sock.get(), *line)) lab::die("write", server_text);
        sent += line->size();
        while (received < sent) {
            if (!read_some()) {
                lab::fatal("connection closed by " + server_text + " after " +
                           std::to_string(received) + " of " + std::to_string(sent) + " bytes");
            }
        }
    }
    if (errno != 0) lab::die("read", "stdin");

    // 4. shutdown(SHUT_WR): tell the server we are done (it reads end of stream), then
    //    read until it closes too. An echo sends back exactly what it got: more bytes
    //    than we sent is not an echo (a "server busy" refusal, say), and is an error.
    shutdown(sock.get(), SHUT_WR);
    while (read_some()) {
    }
    if (received != sent) {
        lab::fatal(server_text + " sent " + std::to_string(received) + " bytes for the " +
                   std::to_string(sent) + " we sent: not an echo");
    }
    return lab::kExitOk;
}
