// 03-tcp-echo server: accepts one client, sends back every byte it reads until the client
// closes, then accepts the next one. An iterative server: while it serves one client,
// the next one's connection is already complete (the kernel did the handshake) but
// waits in the listen backlog, unanswered. Labs 04 to 09 remove that wait.
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
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
// Completed connections the kernel queues for us while we serve someone else.
constexpr int kBacklog = 16;
// Bytes per read(). Any size works, even 1: a stream is cut wherever the reader likes.
constexpr std::size_t kBufferSize = 16384;
// A client silent for this long, or not reading its echo, is dropped (--idle-timeout).
constexpr double kDefaultIdleSeconds = 60;

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--idle-timeout SECONDS] [--quiet]
       server [PORT]
TCP echo server, one client at a time: sends every byte back to the client.
  -H, --host ADDR            address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N               port to bind (default 9903; 0 lets the kernel choose)
      --idle-timeout SECONDS drop a client that sends nothing, or reads nothing, for
                             this long (default 60; 0 waits forever)
      --quiet                no log line per event
      --help                 this text
)";

// Both directions get a deadline. Without one, a client that sends nothing (read blocks)
// or never reads its echo (write blocks on a full buffer) holds the only seat forever.
bool set_idle_timeout(int fd, double seconds) {
    timeval limit{};
    limit.tv_sec = static_cast<time_t>(seconds);
    limit.tv_usec = static_cast<suseconds_t>(std::lround((seconds - std::floor(seconds)) * 1e6));
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) == 0 &&
           setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit) == 0;
}

// Writes all `size` bytes, like lab::write_all, except that a signal asking us to stop
// ends the wait: a client that never reads would otherwise keep SIGTERM waiting too.
bool write_echo(int fd, const char* bytes, std::size_t size) {
    while (size > 0) {
        if (lab::stop_requested()) {
            errno = EINTR;  // report_failure() stays quiet: main says why we stop
            return false;
        }
        const ssize_t n = write(fd, bytes, size);
        if (n == -1) {
            if (errno == EINTR) continue;  // the loop condition looks at the stop flag
            return false;
        }
        bytes += n;  // a short write: the rest goes round again
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

// One client's trouble goes to stderr; the server then drops that client and goes on.
void report_failure(const char* call, const std::string& peer, int err) {
    if (err == EINTR) return;  // SIGTERM or SIGINT: main says that it is stopping
    if (err == EAGAIN || err == EWOULDBLOCK) {
        lab::note(std::string(call) + " " + peer + ": idle too long, dropping the client");
    } else {
        lab::warn(call, peer, err);  // ECONNRESET: the client reset the connection
    }
}

// 5. read() and write() until the client closes. Bytes, not messages: whatever one read()
//    returns goes straight back, however the client's writes were cut up on the way.
//    Returns how many bytes were echoed.
unsigned long long echo(int fd, const std::string& peer, const lab::Log& log) {
    // BEGIN SOLUTION: echo until end of stream: read() from fd into a kBufferSize buffer
    //   (0 means the client closed; on EINTR go round again unless lab::stop_requested()),
    //   log "from PEER: N bytes", send the N bytes back with write_echo() and add N to
    //   `total`; on a failed read or write call report_failure("read"/"write", peer, errno)
    //   and stop. Leave the loop when lab::stop_requested() too.
    // STUB: unsigned long long total = 0;
    // STUB: lab::todo("lab 03: the read() and write_echo() loop");
    std::vector<char> buffer(kBufferSize);
    unsigned long long total = 0;
    while (!lab::stop_requested()) {
        const ssize_t n = read(fd, buffer.data(), buffer.size());
        if (n == 0) return total;  // end of stream: the client closed or shut down its side
        if (n == -1 && errno == EINTR && !lab::stop_requested()) continue;
        if (n == -1) {
            report_failure("read", peer, errno);
            return total;
        }
        log("from ", peer, ": ", n, " bytes");
        if (!write_echo(fd, buffer.data(), static_cast<std::size_t>(n))) {
            report_failure("write", peer, errno);
            return total;
        }
        total += static_cast<unsigned long long>(n);
    }
    // END SOLUTION
    return total;
}

void serve(const lab::Fd& conn, const lab::Endpoint& peer_address, double idle_seconds,
           const lab::Log& log) {
    const std::string peer = lab::format_address(peer_address);
    log("client ", peer, " connected");
    if (idle_seconds > 0 && !set_idle_timeout(conn.get(), idle_seconds)) {
        lab::warn("setsockopt", peer);
    }
    const unsigned long long total = echo(conn.get(), peer, log);
    log("client ", peer, " left after ", total, " bytes");
}

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    double idle_seconds = kDefaultIdleSeconds;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.seconds("--idle-timeout", &idle_seconds);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const lab::Log log(quiet);

    lab::handle_signals();

    // BEGIN SOLUTION: create the listening socket: socket() (local.family(), SOCK_STREAM),
    //   bind() it to `local` and listen() with a backlog of kBacklog; on a failure call
    //   lab::die("socket"/"bind"/"listen", address)
    // STUB: const lab::Fd listen_fd = lab::todo<lab::Fd>("lab 03: socket(), bind() and listen()");
    // 1. socket(): the listening socket. It never carries data; it only hands out
    //    connections.
    const lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");

    // 2. bind(): the address clients connect to. With port 0 the kernel picks one.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }

    // 3. listen(): from here on the kernel completes handshakes by itself and queues up to
    //    kBacklog connections, whether or not we are calling accept().
    if (listen(listen_fd.get(), kBacklog) == -1) {
        lab::die("listen", lab::format_address(local));
    }
    // END SOLUTION
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    const std::string where = lab::format_address(*bound);
    lab::print_ready("tcp", *bound);

    while (!lab::stop_requested()) {
        // BEGIN SOLUTION: accept the next client: accept4() on listen_fd (SOCK_CLOEXEC) into a
        //   lab::Fd, filling a lab::Endpoint with the client's address; on a failure report
        //   it with lab::warn("accept", where) unless errno is EINTR, and
        //   continue; otherwise serve(conn, peer, idle_seconds, log)
        // 4. accept(): takes the oldest queued connection, and a new socket for it alone.
        lab::Endpoint peer;
        const lab::Fd conn(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_CLOEXEC));
        if (!conn) {
            // EINTR is a signal: the loop looks at the flag. Other errors (ECONNABORTED,
            // EMFILE) belong to one connection attempt; the server keeps listening.
            if (errno != EINTR) lab::warn("accept", where);
            continue;
        }
        serve(conn, peer, idle_seconds, log);
        // END SOLUTION
        // 6. close(): conn's Fd closes the connection here; the client reads end of stream.
    }

    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
