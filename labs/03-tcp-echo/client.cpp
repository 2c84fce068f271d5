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

// What one round of pump() saw. A failure goes back to main, whose return closes the socket.
enum class Pumped { kMore, kClosed, kFailed };

AddressList look_up(const lab::Args& args);
Pumped pump(Connection& conn, std::string_view* unsent);
Pumped failed(const char* call, const std::string& where);
int not_an_echo(const Connection& conn);

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
            const Pumped got = pump(conn, &unsent);
            if (got == Pumped::kFailed) return lab::kExitFailure;
            if (got == Pumped::kClosed) return not_an_echo(conn);  // closed too early
        }
        if (conn.received > conn.sent) return not_an_echo(conn);
    }
    if (lab::stop_requested()) return lab::kExitFailure;
    if (errno != 0) {
        lab::warn("read", "stdin");
        return lab::kExitFailure;
    }

    // 4. shutdown(SHUT_WR): no more lines (the server reads the end of the stream); then
    //    read until the server closes too. An echo sends back exactly what it got: more
    //    bytes than we sent is not an echo (a "server busy" refusal, say), and is an error.
    shutdown(conn.sock.get(), SHUT_WR);
    std::string_view nothing;
    Pumped got = Pumped::kMore;
    while ((got = pump(conn, &nothing)) == Pumped::kMore) {
    }
    if (got == Pumped::kFailed) return lab::kExitFailure;
    return conn.received == conn.sent ? lab::kExitOk : not_an_echo(conn);
}

namespace {

// One round of step 3: waits (poll) until the socket can take more of *unsent or has bytes
// for us, sends what it can take (MSG_DONTWAIT: never blocking) and prints what came. A
// client that only wrote would block for good once the server, blocked writing an echo we
// do not read, stops reading. kClosed: the server closed; kFailed: nothing moved for
// --timeout seconds or a call failed (said on stderr), or a stop signal came.
Pumped pump(Connection& conn, std::string_view* unsent) {
    // TASK 03.pump
    // KIT: return lab::todo<Pumped>("03.pump");
    const short events = unsent->empty() ? POLLIN : POLLIN | POLLOUT;
    pollfd ready{conn.sock.get(), events, 0};
    const int n = poll(&ready, 1, lab::to_milliseconds(conn.timeout_seconds));
    if (lab::stop_requested()) return Pumped::kFailed;
    if (n == -1 && errno == EINTR) return Pumped::kMore;  // not a stop signal: go on
    if (n == -1) return failed("poll", conn.where);
    if (n == 0) {
        lab::note("read " + conn.where + ": no reply within " +
                  lab::seconds_text(conn.timeout_seconds));
        return Pumped::kFailed;
    }
    if ((ready.revents & POLLOUT) != 0) {
        const ssize_t sent =
            send(conn.sock.get(), unsent->data(), unsent->size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (sent == -1 && errno != EAGAIN && errno != EINTR) return failed("write", conn.where);
        if (sent > 0) unsent->remove_prefix(static_cast<std::size_t>(sent));
    }
    if ((ready.revents & (POLLIN | POLLHUP | POLLERR)) == 0) return Pumped::kMore;
    char buffer[kBufferSize];
    const ssize_t got = read(conn.sock.get(), buffer, sizeof buffer);
    if (got == -1 && errno == EINTR) return Pumped::kMore;
    if (got == -1) return failed("read", conn.where);
    std::fwrite(buffer, 1, static_cast<std::size_t>(got), stdout);  // exactly the payload
    std::fflush(stdout);
    conn.received += static_cast<unsigned long long>(got);
    return got > 0 ? Pumped::kMore : Pumped::kClosed;
    // END TASK
}

Pumped failed(const char* call, const std::string& where) {
    lab::warn(call, where);  // ECONNRESET: the server reset the connection
    return Pumped::kFailed;
}

// Answers a server that is no echo: it closed before echoing everything, or sent more
// bytes than it got ("server busy", say).
int not_an_echo(const Connection& conn) {
    lab::note(conn.where + " sent " + std::to_string(conn.received) + " bytes for the " +
              std::to_string(conn.sent) + " we sent: not an echo");
    return lab::kExitFailure;
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
