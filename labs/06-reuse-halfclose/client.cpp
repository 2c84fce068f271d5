// 06-reuse-halfclose client: sends all of standard input, then shuts down its sending
// side with shutdown(SHUT_WR) and reads the server's reply until the server closes.
//
// shutdown(SHUT_WR) sends a FIN but keeps the socket open for reading: the server sees
// end of stream (read() returns 0), knows the request is complete, and can still answer.
// close() could not do this: it gives up both directions at once.
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

namespace {

constexpr std::uint16_t kDefaultPort = 9906;
constexpr std::size_t kChunk = 65536;

constexpr const char* kUsage = R"(usage: client [--host ADDR] [--port N]
       client [HOST [PORT]]
Half-close client: sends all of stdin, shuts down its sending side, prints the reply.
  -H, --host ADDR   server address (default 127.0.0.1)
  -p, --port N      server port (default 9906)
      --help        this text
)";

// 3. Copies standard input to the socket. Returns the bytes sent, or -1 if the
//    connection failed (the server may have closed early: it may have said why).
long long send_input(int sock, const std::string& server_text) {
    std::vector<char> chunk(kChunk);
    long long sent = 0;
    for (;;) {
        const ssize_t n = read(STDIN_FILENO, chunk.data(), chunk.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) lab::die("read", "stdin");
        if (n == 0) return sent;
        if (!lab::write_all(sock, chunk.data(), static_cast<std::size_t>(n))) {
            lab::warn("write", server_text);
            return -1;
        }
        sent += n;
    }
}

// 5. Copies the reply to standard output until the server closes. Returns the bytes read.
long long print_reply(int sock, const std::string& server_text) {
    std::vector<char> chunk(kChunk);
    long long received = 0;
    for (;;) {
        const ssize_t n = read(sock, chunk.data(), chunk.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) lab::die("read", server_text);
        if (n == 0) break;  // the server's FIN: the reply is complete
        std::fwrite(chunk.data(), 1, static_cast<std::size_t>(n), stdout);
        received += n;
    }
    std::fflush(stdout);
    return received;
}

}  // namespace

int main(int argc, char** argv) {
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    const std::string server_text = lab::format_address(server);

    std::signal(SIGPIPE, SIG_IGN);  // a vanished peer makes write() fail with EPIPE

    // 1. socket() and 2. connect()
    // BEGIN SOLUTION: create a TCP socket with socket() (server.family(), SOCK_STREAM) and
    //   connect() it to `server`, retrying on EINTR; lab::die("socket"/"connect", ...)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 06: socket() and connect()");
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    while (connect(sock.get(), server.addr(), server.size) == -1) {
        if (errno != EINTR) lab::die("connect", server_text);
    }
    // END SOLUTION

    const long long sent = send_input(sock.get(), server_text);
    // 4. shutdown(SHUT_WR): "that was all". Our FIN goes out; reading still works.
    // BEGIN SOLUTION: half-close the socket with shutdown() and SHUT_WR; do it only when
    //   send_input() sent everything (sent >= 0), and on failure
    //   lab::die("shutdown", server_text)
    if (sent >= 0 && shutdown(sock.get(), SHUT_WR) == -1) {
        lab::die("shutdown", server_text);
    }
    // END SOLUTION
    const long long received = print_reply(sock.get(), server_text);
    if (sent < 0) return lab::kExitFailure;
    if (received != sent) {
        lab::fatal("got " + std::to_string(received) + " bytes back from " + server_text + " for " +
                   std::to_string(sent) + " sent");
    }
    // 6. close() (by the Fd). We sent the first FIN, so our side now waits in TIME_WAIT.
    return lab::kExitOk;
}
