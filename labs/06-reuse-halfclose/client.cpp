// 06-reuse-halfclose client: sends all of standard input, shuts down its sending side with
// shutdown(SHUT_WR), and prints the server's reply until the server closes.
//
// shutdown(SHUT_WR) sends a FIN but keeps the socket open for reading: the server sees the
// end of the stream (read() returns 0), knows the request is complete, and can still answer.
// close() could not do this: it gives up both directions at once.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9906;
constexpr double kDefaultTimeout = 10;
constexpr std::size_t kChunk = 65536;

constexpr const char* kUsage = R"(usage: client [OPTIONS] [HOST [PORT]]
Half-close client: sends all of stdin, shuts down its sending side, prints the reply.
  -H, --host ADDR        server address (default 127.0.0.1)
  -p, --port N           server port (default 9906)
      --timeout SECONDS  give up when the server takes or sends nothing for that long (10)
      --help             this text
)";

static long long send_input(int sock);
static long long print_reply(int sock);

int main(int argc, char** argv) {
    double timeout = kDefaultTimeout;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    const std::string server_text = lab::format_address(server);

    // 1. socket() and 2. connect(). (A Ctrl-C before handle_signals() just ends the client.)
    // TASK 06.connect
    // KIT: const lab::Fd sock = lab::todo<lab::Fd>("06.connect");
    const lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) lab::die("connect", server_text);
    // END TASK
    lab::handle_signals();
    // A server that takes nothing, or says nothing, for --timeout seconds: write() or read()
    // fails with EAGAIN instead of waiting for ever.
    const timeval limit = lab::to_timeval(timeout);
    setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    const std::string silent =
        server_text + " took or sent nothing for " + lab::seconds_text(timeout);

    // 3. Send everything, in chunks: bytes, not lines.
    long long sent = send_input(sock.get());
    const char* failed = "write";  // the call that failed, if one did
    int error = errno;
    if (sent < 0 && error == EAGAIN) lab::fatal(silent);
    // 4. shutdown(SHUT_WR): "that was all". Our FIN goes out; reading still works. (After a
    //    failed write there is no "all": the server has closed, and may have said why. A
    //    server that reset the connection makes shutdown() fail too: the same.)
    // TASK 06.half-close
    if (sent >= 0 && shutdown(sock.get(), SHUT_WR) == -1) {
        error = errno;
        failed = "shutdown";
        sent = -1;
    }
    // END TASK
    // 5. Read the reply until the server's FIN.
    const long long received = print_reply(sock.get());
    if (lab::stop_requested()) return lab::kExitFailure;  // stopped before the end
    if (sent < 0) lab::die(failed, server_text, error);   // the reply first, then why
    if (received < 0 && errno == EAGAIN) lab::fatal(silent);
    if (received < 0) lab::die("read", server_text);
    if (received != sent) {
        lab::fatal("got " + std::to_string(received) + " bytes back from " + server_text + " for " +
                   std::to_string(sent) + " sent");
    }
    // 6. close() (by the Fd). We sent the first FIN, so our side now waits in TIME_WAIT.
    return lab::kExitOk;
}

// Copies standard input to the socket until its end. Returns the bytes sent, or -1 (errno
// set) when a write failed: the server closed early, or took nothing for --timeout.
static long long send_input(int sock) {
    std::vector<char> chunk(kChunk);
    long long sent = 0;
    while (!lab::stop_requested()) {
        const ssize_t n = read(STDIN_FILENO, chunk.data(), chunk.size());
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the loop's check
        if (n < 0) lab::die("read", "stdin");
        if (n == 0) return sent;
        if (!lab::write_all(sock, chunk.data(), static_cast<std::size_t>(n))) return -1;
        sent += n;
    }
    return -1;
}

// Copies the reply to standard output until the server's FIN (read() returns 0). Returns
// the bytes read, or -1 (errno set) when a read failed: a reset, or EAGAIN after --timeout.
static long long print_reply(int sock) {
    // TASK 06.print-reply
    std::vector<char> chunk(kChunk);
    long long received = 0;
    while (!lab::stop_requested()) {
        const ssize_t n = read(sock, chunk.data(), chunk.size());
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the loop's check
        if (n == -1) return -1;
        if (n == 0) break;  // the server's FIN: the reply is complete
        std::fwrite(chunk.data(), 1, static_cast<std::size_t>(n), stdout);
        std::fflush(stdout);
        received += n;
    }
    return received;
    // END TASK
}
