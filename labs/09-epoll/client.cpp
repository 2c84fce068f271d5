// 09-epoll client: C10K from the client's side. One epoll loop drives N connections
// (--connections N, default 1): standard input goes out on each, each echo is checked
// against what was sent, and stdout shows the echo once every connection has returned it.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9909;
constexpr long long kConnectionsLimit = 1000000;
constexpr double kDefaultTimeout = 10;    // seconds
constexpr std::size_t kChunk = 65536;     // the most read at once
constexpr std::size_t kWindow = 1 << 20;  // input read ahead of the slowest echo, at most
constexpr std::uint64_t kInput = ~0ULL;   // standard input's tag in the epoll events

constexpr const char* kUsage = R"(usage: client [--host ADDR] [--port N] [OPTIONS]
       client [HOST [PORT]]
TCP echo client on epoll: standard input out on every connection, each echo checked.
  -H, --host ADDR        server address or name (default 127.0.0.1)
  -p, --port N           server port (default 9909)
      --connections N    connections driven at once by one loop (default 1)
      --timeout SECONDS  give up when the server sends nothing for this long (default 10)
)";

struct Connection {
    lab::Fd fd;
    std::uint64_t written = 0, echoed = 0;  // how far into the input stream
    bool shut = false, closed = false;      // our FIN went, the server's came
};

struct Client {
    lab::Fd epoll_fd;
    std::string where;
    std::vector<Connection> conns;
    std::string input;  // the input from offset `base` on: what some connection still owes
    std::uint64_t base = 0, total = 0, owed = 0;  // owed: bytes sent, not yet echoed
    std::uint64_t heard = 0;  // replies and input so far: each restarts the reply timeout
    bool eof = false, watched = false, file = false;  // stdin ended, watched, a regular file
    char last = '\n';                                 // the last byte of input
    std::vector<char> chunk = std::vector<char>(kChunk);
    void serve(Connection& conn);  // the lesson, after main
    void send(Connection& conn);
    void read_input();  // the defences
    void print_echoed();
    void watch_input(bool on);
    bool reading() const { return !eof && input.size() < kWindow; }
    bool done() const { return std::ranges::all_of(conns, std::identity(), &Connection::closed); }
};
int main(int argc, char** argv) {
    Client client;
    long long connections = 1;
    double timeout = kDefaultTimeout;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kHostPort);
    args.option("--connections", &connections, 1, kConnectionsLimit);
    args.seconds("--timeout", &timeout);
    args.parse(argc, argv);
    const lab::Endpoint server = args.endpoint(SOCK_STREAM);
    client.where = lab::format_address(server);
    lab::handle_signals();
    // 1. epoll_create1(): one instance watches every connection, and standard input.
    client.epoll_fd.reset(epoll_create1(EPOLL_CLOEXEC));
    if (!client.epoll_fd) lab::die("epoll_create1");
    // 2. socket() and connect(), N times (Args::endpoint() took the address: lab 03 shows
    //    how), then 3. epoll_ctl(ADD), edge-triggered, once; from then on, non-blocking.
    client.conns.resize(static_cast<std::size_t>(connections));
    for (std::size_t i = 0; i < client.conns.size(); ++i) {
        const int fd = socket(server.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
        client.conns[i].fd.reset(fd);
        if (fd == -1) lab::die("socket");
        if (connect(fd, server.addr(), server.size) == -1) {
            if (lab::stop_requested()) return lab::kExitFailure;  // EINTR: stopped meanwhile
            lab::die("connect", client.where);
        }
        epoll_event event{.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data = {.u64 = i}};
        if (fcntl(fd, F_SETFL, O_NONBLOCK) == -1) lab::die("fcntl");
        if (epoll_ctl(client.epoll_fd.get(), EPOLL_CTL_ADD, fd, &event) == -1)
            lab::die("epoll_ctl");
    }
    client.watch_input(true);
    std::vector<epoll_event> events(1024);
    double deadline = lab::now_seconds() + timeout;  // if no reply comes
    while (!client.done() && !lab::stop_requested()) {
        // 4. epoll_wait() for stdin and the connections; the timeout runs while a reply is
        //    owed (bytes sent and not yet back, or the FIN after ours).
        const bool owed = client.owed > 0 || client.eof;
        int wait = owed ? lab::to_milliseconds(deadline - lab::now_seconds()) : -1;
        if (client.file && client.reading()) wait = 0;  // epoll refuses a file: read anyway
        const int n = epoll_wait(client.epoll_fd.get(), events.data(), 1024, wait);
        if (n == -1 && errno == EINTR) continue;  // back to the check of the stop flag
        if (n == -1) lab::die("epoll_wait");
        if (n == 0 && owed && lab::now_seconds() >= deadline)
            lab::fatal("read " + client.where + ": no reply within " + lab::seconds_text(timeout));
        const std::uint64_t heard = client.heard;
        for (int i = 0; i < n; ++i) {
            const std::uint64_t tag = events[i].data.u64;
            if (tag == kInput) client.read_input();
            if (tag != kInput) client.serve(client.conns[tag]);
        }
        if (client.file && client.reading()) client.read_input();
        if (client.heard != heard) deadline = lab::now_seconds() + timeout;
        client.print_echoed();
    }
    return lab::stop_requested() ? lab::kExitFailure : lab::kExitOk;
}

// 5. A connection's turn, edge-triggered: read() until EAGAIN. Each byte must be the next
//    one this connection sent; at the server's FIN, every byte must be back. Then send().
void Client::serve(Connection& conn) {
    for (ssize_t n = 1; n > 0 && !conn.closed;) {
        n = read(conn.fd.get(), chunk.data(), chunk.size());
        if (n == -1 && errno != EAGAIN) lab::die("read", where);
        const std::string_view got(chunk.data(), static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
        if (got.size() > conn.written - conn.echoed ||
            !std::string_view(input).substr(conn.echoed - base).starts_with(got)) {
            lab::fatal(where + " sent back \"" + std::string(got.substr(0, 40)) +
                       "\": not an echo");
        }
        if (n == 0 && (conn.echoed < total || !eof)) {
            lab::fatal("connection closed by " + where + " after " + std::to_string(conn.echoed) +
                       " of " + std::to_string(total) + " bytes");
        }
        conn.echoed += got.size();
        owed -= got.size();
        heard += n >= 0 ? 1 : 0;
        conn.closed = n == 0;
    }
    if (!conn.closed) send(conn);
}

// 6. write() what this connection has not sent, until EAGAIN (EPOLLOUT comes when there is
//    room again). At the end of input, shutdown(SHUT_WR): the server reads end of stream.
void Client::send(Connection& conn) {
    while (conn.written < total) {
        const std::string_view rest = std::string_view(input).substr(conn.written - base);
        const ssize_t n = write(conn.fd.get(), rest.data(), rest.size());
        if (n == -1) return;  // EAGAIN; or an error, which the read side reports with why
        conn.written += static_cast<std::uint64_t>(n);
        owed += static_cast<std::uint64_t>(n);
    }
    if (eof && !std::exchange(conn.shut, true)) shutdown(conn.fd.get(), SHUT_WR);
}

// Standard input, a chunk at a time, sent on every connection; a last line without its
// newline gets one. At kWindow bytes ahead of the slowest echo, reading stops a while.
void Client::read_input() {
    const ssize_t n = read(STDIN_FILENO, chunk.data(), chunk.size());
    if (n == -1) lab::die("read", "stdin");  // (never EINTR: it was ready, it does not wait)
    input.append(chunk.data(), static_cast<std::size_t>(n));
    if (n == 0 && total > 0 && last != '\n') input += '\n';
    if (n > 0) last = chunk[static_cast<std::size_t>(n) - 1];
    total = base + input.size();
    eof = n == 0;
    ++heard;
    if (!reading()) watch_input(false);
    std::ranges::for_each(conns, [this](Connection& conn) { send(conn); });
}

// stdout shows what every connection has echoed; the input before that is done with.
void Client::print_echoed() {
    const std::uint64_t echoed = std::ranges::min_element(conns, {}, &Connection::echoed)->echoed;
    if (echoed == base) return;
    std::fwrite(input.data(), 1, echoed - base, stdout);
    std::fflush(stdout);
    input.erase(0, echoed - base);
    base = echoed;
    if (reading()) watch_input(true);
}

// stdin is in the interest list only while it may be read: watched level-triggered and
// left unread, it would be reported on every call (EPOLLHUP too, asked for or not).
void Client::watch_input(bool on) {
    if (file || on == watched) return;
    epoll_event event{.events = EPOLLIN, .data = {.u64 = kInput}};
    if (epoll_ctl(epoll_fd.get(), on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, STDIN_FILENO, &event) == -1) {
        if (errno != EPERM) lab::die("epoll_ctl", "stdin");
        file = true;  // a regular file: always readable, so epoll refuses it
    }
    watched = on;
}
