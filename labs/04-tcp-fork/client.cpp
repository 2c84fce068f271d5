// 04-tcp-fork client: two processes on one connection (UNP's str_cli with fork). After
// fork() the child copies the socket to standard output while the parent copies standard
// input to the socket, so neither waits for the other: a line of any length goes out while
// its echo comes back. At the end of input the parent half-closes the connection and
// waits for the child, which ends when the server closes.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9904;
constexpr std::size_t kBufferSize = 16384;  // bytes per read() in the child
constexpr double kDefaultTimeoutSeconds = 10;

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS]
       client [HOST [PORT]]
TCP echo client with two processes: one sends stdin, the other prints what comes back.
  -H, --host ADDR        server address or name (default 127.0.0.1)
  -p, --port N           server port (default 9904)
      --timeout SECONDS  give up when the server sends nothing for this long (default 10)
      --help             this text
)";

// SIGCHLD, in the parent: the child has ended (the server closed, or fell silent), so the
// input need not be read any further. The handler raises SIGTERM, the stop signal every
// loop obeys already; raise() is async-signal-safe (signal-safety(7)).
extern "C" void on_child_exit(int /*signo*/) {
    std::raise(SIGTERM);
}

int copy_to_stdout(int sock, const std::string& where, double timeout_seconds, int count_fd);

}  // namespace

int main(int argc, char** argv) {
    double timeout_seconds = kDefaultTimeoutSeconds;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &timeout_seconds);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);  // getaddrinfo(), as lab 03 shows
    const std::string where = lab::format_address(server);
    lab::handle_signals();  // SIGINT, SIGTERM: interrupt the blocking call, set the flag

    // 1. socket() and connect(), as in lab 03.
    lab::Fd sock(socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");
    if (connect(sock.get(), server.addr(), server.size) == -1) {
        if (lab::stop_requested()) return lab::kExitFailure;  // EINTR: stopped meanwhile
        lab::die("connect", where);
    }

    // 2. fork(): both processes now hold the one connection. The child reads from it,
    //    the parent writes to it; the child leaves with _exit(). They share no memory, so
    //    the child reports how many bytes came back through a pipe. SIGCHLD's handler
    //    comes first: the child may be gone before fork() has returned in the parent.
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) == -1) lab::die("pipe");
    lab::Fd count_in(ends[0]);
    lab::Fd count_out(ends[1]);
    struct sigaction action {};
    action.sa_handler = on_child_exit;
    sigaction(SIGCHLD, &action, nullptr);
    const pid_t child = fork();
    if (child == -1) lab::die("fork");
    if (child == 0) {
        count_in.reset();  // the child only writes to the pipe; it owns what it is given
        _exit(copy_to_stdout(sock.release(), where, timeout_seconds, count_out.release()));
    }
    count_out.reset();  // the child's copy is the only writer: EOF once it has gone

    // 3. The parent: standard input to the socket, a line at a time, until the end of
    //    input, a failed write (EPIPE: the server has gone) or a stop signal (EINTR): ^C,
    //    kill, or on_child_exit() when the child has ended.
    lab::LineReader input(STDIN_FILENO);
    std::optional<std::string> line;
    unsigned long long sent = 0;
    while ((line = input.read_line()) && lab::write_all(sock.get(), *line + '\n')) {
        sent += line->size() + 1;
    }
    const bool sent_all = !line && input.eof();
    if (line && !lab::stop_requested()) lab::warn("write", where);
    if (!line && !input.eof() && !lab::stop_requested()) lab::warn("read", "stdin");

    // 4. shutdown(SHUT_WR) at the end of input: the server reads the end of the stream,
    //    sends back the rest and closes, and the child sees that close. close() would not
    //    do: the child's copy keeps the connection open, and we must still hear the rest.
    //    Stopped early instead: end the child.
    if (sent_all) shutdown(sock.get(), SHUT_WR);
    if (!sent_all) kill(child, SIGTERM);

    // 5. waitpid(): the child's exit status says whether it heard the server close. A stop
    //    signal while we wait (EINTR) ends the child too; common/'s 50 ms alarm that
    //    follows it interrupts again: wait on.
    int status = 0;
    while (waitpid(child, &status, 0) == -1) {
        if (errno != EINTR) lab::die("waitpid");
        if (lab::stop_requested()) kill(child, SIGTERM);
    }
    const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == lab::kExitOk;
    if (!line && !sent_all && child_ok) {  // the child heard the close, not a stop signal
        lab::note("connection closed by " + where + " before the end of input");
    }
    unsigned long long received = 0;  // an echo sends back exactly what it got
    if (read(count_in.get(), &received, sizeof received) != sizeof received) received = 0;
    if (sent_all && child_ok && received != sent) {
        lab::note(where + " sent " + std::to_string(received) + " bytes for the " +
                  std::to_string(sent) + " we sent: not an echo");
        return lab::kExitFailure;
    }
    return sent_all && child_ok ? lab::kExitOk : lab::kExitFailure;
}

namespace {

// The child of step 2: the socket to standard output, until the server closes (exit 0),
// an error, or --timeout seconds without a byte (exit 1): the child cannot know whether
// the parent is still sending, so it cannot tell a silent server from a slow typist. Then
// it writes the count of bytes it got to count_fd. The stop signals get their default
// action back: ^C, or the parent's SIGTERM, just ends it.
int copy_to_stdout(int sock, const std::string& where, double timeout_seconds, int count_fd) {
    const lab::Fd owned_sock(sock), owned_count(count_fd);  // closed before the _exit()
    // TASK 04.reader
    // KIT: return lab::todo<int>("04.reader");
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (lab::stop_requested()) return lab::kExitFailure;  // a stop signal came before
    const timeval limit = lab::to_timeval(timeout_seconds);
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    char buffer[kBufferSize];
    unsigned long long received = 0;
    ssize_t n = 0;
    while ((n = read(sock, buffer, sizeof buffer)) > 0) {
        std::fwrite(buffer, 1, static_cast<std::size_t>(n), stdout);  // exactly the payload
        std::fflush(stdout);
        received += static_cast<unsigned long long>(n);
    }
    if (n == -1 && errno == EAGAIN) {
        lab::note("read " + where + ": no reply within " + lab::seconds_text(timeout_seconds));
    } else if (n == -1) {
        lab::warn("read", where);  // ECONNRESET: the server reset the connection
    }
    if (!lab::write_all(count_fd, &received, sizeof received)) lab::warn("write", "pipe");
    return n == 0 ? lab::kExitOk : lab::kExitFailure;
    // END TASK
}

}  // namespace
