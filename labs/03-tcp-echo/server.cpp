// 03-tcp-echo server: the first TCP server. It accepts one client, sends back every byte it
// reads until the client closes, then accepts the next; meanwhile the kernel completes the
// next one's handshake and queues it. Its addresses come from the getaddrinfo() loop of
// UNP's tcp_listen, in plain sight (from lab 04 on, lab::Args::endpoint() does that part).
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9903;
constexpr int kBacklog = SOMAXCONN;         // the kernel caps it at net.core.somaxconn
constexpr std::size_t kBufferSize = 16384;  // bytes per read(): any size is correct, even 1
constexpr double kDefaultIdleSeconds = 60;

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--idle-timeout SECONDS] [--quiet]
       server [PORT]
TCP echo server, one client at a time: sends every byte back to the client.
  -H, --host ADDR            address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N               port to bind (default 9903; 0 lets the kernel choose)
      --idle-timeout SECONDS drop a client idle for this long (default 60)
      --quiet                no log line per event
      --help                 this text
)";

// getaddrinfo()'s list, handed back to freeaddrinfo() when it goes out of scope.
using AddressList = std::unique_ptr<addrinfo, decltype(&freeaddrinfo)>;

AddressList look_up(const lab::Args& args);
void echo(int conn, const std::string& peer, double idle_seconds, const lab::Log& log);
void set_idle_timeout(int conn, double seconds);
void after_accept_failure(const std::string& where);

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    double idle_seconds = kDefaultIdleSeconds;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.seconds("--idle-timeout", &idle_seconds);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Log log(quiet);
    lab::handle_signals();  // SIGINT, SIGTERM: interrupt the blocking call, set the flag

    // 1. getaddrinfo(): --host and --port as socket addresses (sockaddr_in, sockaddr_in6).
    //    A name may have several, IPv4 and IPv6; AI_PASSIVE asks for addresses to bind.
    const AddressList found = look_up(args);

    // 2. socket(), SO_REUSEADDR and bind() on each address in turn until one works (UNP's
    //    tcp_listen). SO_REUSEADDR: a restarted server binds at once, though its old
    //    connections still sit in TIME_WAIT (lab 06).
    lab::Fd listen_fd;
    std::string where;  // the address tried last: the one the messages name
    int err = 0;        // why the last bind() failed
    // TASK 03.bind
    for (const addrinfo* ai = found.get(); ai != nullptr && !listen_fd; ai = ai->ai_next) {
        where = lab::format_address(ai->ai_addr, ai->ai_addrlen);
        lab::Fd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
        if (!fd) lab::die("socket", where);
        const int on = 1;
        if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
            lab::die("setsockopt", where);
        }
        if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) listen_fd = std::move(fd);
        err = errno;
    }
    // END TASK
    if (!listen_fd) lab::die("bind", where, err);

    // 3. listen(): from here on the kernel completes handshakes and queues connections (up
    //    to kBacklog), whether or not we are in accept().
    if (listen(listen_fd.get(), kBacklog) == -1) lab::die("listen", where);
    const auto bound = lab::local_endpoint(listen_fd.get());  // the port, if --port 0
    if (!bound) lab::die("getsockname");
    where = lab::format_address(*bound);
    lab::print_ready("tcp", *bound);

    // The stop flag, each time round: a stop signal makes accept() or read() return EINTR.
    while (!lab::stop_requested()) {
        // 4. accept(): the oldest queued connection, on a new socket for this client alone.
        lab::Endpoint peer_address;
        // TASK 03.accept
        // KIT: lab::Fd conn = lab::todo<lab::Fd>("03.accept");
        lab::Fd conn(
            accept4(listen_fd.get(), peer_address.addr(), &peer_address.size, SOCK_CLOEXEC));
        // END TASK
        if (!conn) {
            after_accept_failure(where);
            continue;
        }
        const std::string peer = lab::format_address(peer_address);
        log("client ", peer, " connected");
        set_idle_timeout(conn.get(), idle_seconds);

        // 5. read() and write() until the client closes (echo(), below).
        echo(conn.get(), peer, idle_seconds, log);

        // 6. close(): the client reads the end of the stream, and the next one is served.
        conn.reset();
    }
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

// The echo of step 5: whatever one read() returns goes straight back, however the client's
// writes were cut up on the way: a stream carries bytes, not messages. Logs each read, then
// how the client's turn ended: it left (read() returned 0: the end of the stream), or it
// was dropped (EAGAIN after --idle-timeout, ECONNRESET ...). A stop signal ends it quietly.
void echo(int conn, const std::string& peer, double idle_seconds, const lab::Log& log) {
    // TASK 03.echo
    std::vector<char> buffer(kBufferSize);
    unsigned long long total = 0;
    while (!lab::stop_requested()) {
        const ssize_t n = read(conn, buffer.data(), buffer.size());
        if (n == 0) {
            log("client ", peer, " left after ", total, " bytes");
            return;
        }
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the flag
        if (n == -1) break;
        log("from ", peer, ": ", n, " bytes");
        if (!lab::write_all(conn, buffer.data(), static_cast<std::size_t>(n))) break;
        total += static_cast<unsigned long long>(n);
    }
    if (lab::stop_requested()) return;  // main says why it stops
    log("client ", peer, " dropped: ",
        errno == EAGAIN ? "idle for " + lab::seconds_text(idle_seconds) : std::strerror(errno));
    // END TASK
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
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_NUMERICHOST;
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

// Answers a client that stalls: without a deadline, one peer that sends nothing (read()
// blocks) or never reads its echo (write() blocks on a full buffer) holds the only seat
// forever. After --idle-timeout, read() or write() fails with EAGAIN instead.
void set_idle_timeout(int conn, double seconds) {
    const timeval limit = lab::to_timeval(seconds);  // rounded up: never 0, "no deadline"
    if (setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) == -1 ||
        setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit) == -1) {
        lab::warn("setsockopt", "SO_RCVTIMEO/SO_SNDTIMEO");
    }
}

// Answers running out of descriptors (EMFILE, ENFILE): the connection stays queued, so
// accept() would fail again at once and the loop would spin. Say so, then rest a second
// (a stop signal cuts the rest short). EINTR is a signal: the loop looks at the flag.
void after_accept_failure(const std::string& where) {
    const int err = errno;
    if (err == EINTR) return;
    lab::warn("accept", where, err);  // ECONNABORTED: that client gave up while queued
    if (err == EMFILE || err == ENFILE) poll(nullptr, 0, 1000);
}

}  // namespace
