// 03-tcp-echo client: stop and wait. It sends a line of standard input, reads until the
// line's echo is back, prints it, and only then sends the next: the baseline that lab 07's
// select() client is measured against. A stream has no message boundaries, so it counts
// bytes: one write() may come back as several read()s, or two as one.
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9903;
constexpr std::size_t kBufferSize = 16384;  // bytes per read(): the network decides the cuts
constexpr double kDefaultTimeoutSeconds = 10;

constexpr const char* kUsage =
    R"(usage: client [--host ADDR] [--port N] [--timeout SECONDS]
       client [HOST [PORT]]
TCP echo client: sends each line of stdin, prints what comes back.
  -H, --host ADDR        server address or name (default 127.0.0.1)
  -p, --port N           server port (default 9903)
      --timeout SECONDS  give up when the server sends nothing for this long (default 10)
      --help             this text
)";

// getaddrinfo()'s list, handed back to freeaddrinfo() when it goes out of scope.
using AddressList = std::unique_ptr<addrinfo, decltype(&freeaddrinfo)>;

// The connection and what has gone through it, both ways, since it opened.
struct Connection {
    lab::Fd sock;
    std::string where;  // the server's address, for messages
    double timeout_seconds = kDefaultTimeoutSeconds;
    unsigned long long sent = 0;
    unsigned long long received = 0;
};

AddressList look_up(const lab::Args& args);
bool pump(Connection& conn, std::string_view* unsent);
[[noreturn]] void not_an_echo(const Connection& conn);

}  // namespace

int main(int argc, char** argv) {
    Connection conn;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.seconds("--timeout", &conn.timeout_seconds);
    args.parse(argc, argv);
    lab::handle_signals();  // SIGINT, SIGTERM: interrupt the blocking call, set the flag

    // 1. getaddrinfo(): every address of the server; a name may have several (IPv4, IPv6).
    const AddressList found = look_up(args);

    // 2. socket() and connect() to each address in turn until one answers (UNP's
    //    tcp_connect): "localhost" may be ::1 first, with the server on 127.0.0.1 only.
    int err = 0;  // why the last connect() failed
    // TASK 03.connect
    for (const addrinfo* ai = found.get(); ai != nullptr && !conn.sock; ai = ai->ai_next) {
        conn.where = lab::format_address(ai->ai_addr, ai->ai_addrlen);
        lab::Fd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
        if (!fd) lab::die("socket", conn.where);
        if (connect(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) conn.sock = std::move(fd);
        err = errno;
    }
    // END TASK
    if (lab::stop_requested()) return lab::kExitFailure;  // EINTR: stopped while connecting
    if (!conn.sock) lab::die("connect", conn.where, err);

    // 3. Send a line, then read until its echo is back. The totals run over the whole
    //    connection, so bytes that arrive early or late are never lost between lines.
    lab::LineReader input(STDIN_FILENO);
    while (auto line = input.read_line()) {
        line->push_back('\n');
        conn.sent += line->size();
        std::string_view unsent = *line;
        while (!unsent.empty() || conn.received < conn.sent) {
            if (!pump(conn, &unsent)) {
                lab::fatal("connection closed by " + conn.where + " after " +
                           std::to_string(conn.received) + " of " + std::to_string(conn.sent) +
                           " bytes");
            }
        }
        if (conn.received > conn.sent) not_an_echo(conn);
    }
    if (lab::stop_requested()) return lab::kExitFailure;
    if (errno != 0) lab::die("read", "stdin");

    // 4. shutdown(SHUT_WR): no more lines (the server reads the end of the stream); then
    //    read until the server closes too. An echo sends back exactly what it got: more
    //    bytes than we sent is not an echo (a "server busy" refusal, say), and is an error.
    shutdown(conn.sock.get(), SHUT_WR);
    std::string_view nothing;
    while (pump(conn, &nothing)) {
    }
    if (conn.received != conn.sent) not_an_echo(conn);
    return lab::kExitOk;
}

namespace {

// One round of step 3: waits (poll) until the socket can take more of *unsent or has
// bytes for us, then sends what it can take and prints what came. Reading while writing
// is what makes a long line safe: a client that only wrote would block in write() as
// soon as the server, blocked writing the echo we do not read, stops reading. send()
// with MSG_DONTWAIT never blocks. False once the server has closed its side. Exits 1 when
// nothing moves for --timeout seconds, or when a stop signal came.
bool pump(Connection& conn, std::string_view* unsent) {
    // TASK 03.pump
    // KIT: return lab::todo<bool>("03.pump");
    const short events = unsent->empty() ? POLLIN : POLLIN | POLLOUT;
    pollfd ready{conn.sock.get(), events, 0};
    const int n = poll(&ready, 1, lab::to_milliseconds(conn.timeout_seconds));
    if (lab::stop_requested()) std::exit(lab::kExitFailure);
    if (n == -1 && errno == EINTR) return true;  // not a stop signal: go round again
    if (n == -1) lab::die("poll", conn.where);
    if (n == 0) {
        lab::fatal("read " + conn.where + ": no reply within " +
                   lab::seconds_text(conn.timeout_seconds));
    }
    if ((ready.revents & POLLOUT) != 0) {
        const ssize_t sent =
            send(conn.sock.get(), unsent->data(), unsent->size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent == -1 && errno != EAGAIN && errno != EINTR) lab::die("write", conn.where);
        if (sent > 0) unsent->remove_prefix(static_cast<std::size_t>(sent));
    }
    if ((ready.revents & (POLLIN | POLLHUP | POLLERR)) == 0) return true;
    char buffer[kBufferSize];
    const ssize_t got = read(conn.sock.get(), buffer, sizeof buffer);
    if (got == -1 && errno == EINTR) return true;
    if (got == -1) lab::die("read", conn.where);
    std::fwrite(buffer, 1, static_cast<std::size_t>(got), stdout);  // exactly the payload
    std::fflush(stdout);
    conn.received += static_cast<unsigned long long>(got);
    return got > 0;
    // END TASK
}

// Answers a server that is no echo: it sent more bytes than it got ("server busy", say).
void not_an_echo(const Connection& conn) {
    lab::fatal(conn.where + " sent " + std::to_string(conn.received) + " bytes for the " +
               std::to_string(conn.sent) + " we sent: not an echo");
}

// getaddrinfo() for --host: a numeric host is only ever parsed (AI_NUMERICHOST), so a
// mistyped 999.1.1.1 never becomes a DNS query; only a name is looked up. A bad host is a
// usage error (exit 2); a resolver that cannot answer is a failure (exit 1).
AddressList look_up(const lab::Args& args) {
    const std::string& host = args.host();
    const std::string port = std::to_string(args.port());
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;      // IPv4 or IPv6, whichever the host is
    hints.ai_socktype = SOCK_STREAM;  // TCP
    hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
    addrinfo* list = nullptr;
    int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
    const bool numeric = host.find(':') != std::string::npos ||
                         host.find_first_not_of("0123456789.") == std::string::npos;
    if (rc == EAI_NONAME && !numeric) {
        hints.ai_flags &= ~AI_NUMERICHOST;  // a name: now the resolver may look it up
        rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &list);
    }
    if (rc == EAI_AGAIN || rc == EAI_FAIL || rc == EAI_MEMORY || rc == EAI_SYSTEM) {
        lab::fatal("getaddrinfo " + host + ": " + gai_strerror(rc));
    }
    if (rc != 0) {
        args.usage_error("bad host '" + host +
                         "': " + (numeric ? "not an IPv4 or IPv6 address" : gai_strerror(rc)));
    }
    return {list, freeaddrinfo};
}

}  // namespace
