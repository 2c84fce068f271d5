// 06-reuse-halfclose server: reads everything a client sends until end of stream, then
// sends it all back and closes.
//
// The client ends its sending half with shutdown(SHUT_WR) and keeps reading: a half-closed
// connection. Because the client's FIN goes first here, TIME_WAIT lands on the client's
// side. Stop the server while a client is connected and the server closes first: then its
// own port holds TIME_WAIT, and a restart needs SO_REUSEADDR (the default; --no-reuseaddr
// shows the failure). --reuseport lets several servers listen on one port.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <ctime>
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
constexpr long long kDefaultMaxBytes = 16LL * 1024 * 1024;  // 16 MiB
constexpr long long kMostBytes = 1024LL * 1024 * 1024;      // upper bound for --max-bytes
constexpr double kDefaultTimeout = 10.0;                    // seconds a peer may stall
constexpr int kBacklog = 128;
constexpr std::size_t kChunk = 65536;  // bytes asked of one read()

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--max-bytes N] [--timeout SECONDS]
              [--no-reuseaddr] [--reuseport] [--quiet]
       server [PORT]
Half-close echo server: reads until the client shuts down its sending side, then sends
everything back and closes. One client at a time.
  -H, --host ADDR       address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N          port to listen on (default 9906; 0 lets the kernel choose)
      --max-bytes N     most bytes taken from one client (default 16777216 = 16 MiB);
                        beyond it the server says so and closes
      --timeout SECONDS how long a client may send nothing, or read nothing, before it
                        is dropped (default 10)
      --no-reuseaddr    leave SO_REUSEADDR off: a restart fails while TIME_WAIT lingers
      --reuseport       set SO_REUSEPORT: several servers may listen on the same port
      --quiet           no log line per event
      --help            this text
)";

struct Options {
    long long max_bytes = kDefaultMaxBytes;
    double timeout = kDefaultTimeout;
    bool reuseaddr = true;
    bool reuseport = false;
    bool quiet = false;
};

std::string seconds_text(double seconds) {
    char text[32];
    std::snprintf(text, sizeof text, "%gs", seconds);
    return text;
}

enum class Wait { kReady, kTimedOut, kStop };

// Waits until fd is readable, `timeout` seconds pass (a negative timeout: forever), or a
// stop signal comes. The stop signals are blocked except inside ppoll(), which lets them
// in and waits as one atomic step, so one that arrives while we are busy is not lost.
Wait wait_readable(int fd, double timeout, const sigset_t& wait_mask) {
    timespec limit{};
    limit.tv_sec = static_cast<time_t>(timeout);
    limit.tv_nsec = static_cast<long>((timeout - static_cast<double>(limit.tv_sec)) * 1e9);
    pollfd ready{fd, POLLIN, 0};
    for (;;) {
        if (lab::stop_requested()) return Wait::kStop;
        const int n = ppoll(&ready, 1, timeout < 0 ? nullptr : &limit, &wait_mask);
        if (n > 0) return Wait::kReady;
        if (n == 0) return Wait::kTimedOut;
        if (errno != EINTR) lab::die("ppoll");
    }
}

// Reads until end of stream into `data`. Returns false (having told the peer why, where
// that helps) when the peer stalls, sends too much, resets, or the server is stopping.
bool receive_all(int fd, const std::string& peer, const Options& options, const sigset_t& wait_mask,
                 std::vector<char>& data) {
    const auto limit = static_cast<std::size_t>(options.max_bytes);
    for (;;) {
        // 6. read() only once ppoll() says there is something: a silent peer times out.
        const Wait waited = wait_readable(fd, options.timeout, wait_mask);
        if (waited == Wait::kStop) return false;
        if (waited == Wait::kTimedOut) {
            lab::note("read " + peer + ": " +
                                "nothing for " + seconds_text(options.timeout) + "; dropped");
            return false;
        }
        // Ask for one byte more than the limit allows, so "over the limit" is detectable.
        // BEGIN SOLUTION: read() the next chunk onto the end of `data` (at most kChunk bytes,
        //   never past limit + 1 bytes in all) and shrink `data` back to what arrived; at end
        //   of stream (read() returns 0: the client's FIN) return true; retry on EINTR; on
        //   another error lab::warn("read", peer) and return false
        const std::size_t have = data.size();
        data.resize(have + std::min(kChunk, limit + 1 - have));
        const ssize_t n = read(fd, data.data() + have, data.size() - have);
        data.resize(have + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
        if (n == 0) return true;  // the client's FIN: it has shut down its sending side
        if (n == -1) {
            if (errno == EINTR) continue;
            lab::warn("read", peer);
            return false;
        }
        // END SOLUTION
        if (data.size() > limit) {
            const std::string reply =
                "server: more than " + std::to_string(limit) + " bytes; closing\n";
            lab::note("read " + peer + ": " +
                                "more than " + std::to_string(limit) + " bytes; closed");
            (void)lab::write_all(fd, reply);  // best effort: the peer may be gone already
            return false;
        }
    }
}

// One client: 6. read to end of stream, 7. write it all back, 8. close.
void serve(lab::Fd conn, const std::string& peer, const Options& options, const sigset_t& wait_mask,
           const lab::Log& log) {
    log("pid ", getpid(), ": ", peer, " connected");
    // A peer that never reads its reply would block write() forever: give up after
    // --timeout seconds instead (write() then fails with EAGAIN).
    timeval send_limit{};
    send_limit.tv_sec = static_cast<time_t>(options.timeout);
    send_limit.tv_usec =
        static_cast<suseconds_t>((options.timeout - static_cast<double>(send_limit.tv_sec)) * 1e6);
    setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &send_limit, sizeof send_limit);

    std::vector<char> data;
    if (!receive_all(conn.get(), peer, options, wait_mask, data)) {
        if (lab::stop_requested()) log(peer, ": server stopping, closing first");
        return;  // the Fd closes the connection
    }
    log(peer, " sent ", data.size(), " bytes and shut down its side; sending them back");
    // 7. Our sending half is still open after the client's FIN: that is the half-close.
    if (!lab::write_all(conn.get(), data.data(), data.size())) {
        const int err = errno;
        if (err == EAGAIN) {
            lab::note("write " + peer + ": reply not read for " + seconds_text(options.timeout) +
                      "; dropped");
        } else {
            lab::warn("write", peer, err);
        }
        return;
    }
    // 8. close() (by the Fd): our FIN answers the client's. The client closed first, so
    //    the client's side, not ours, waits in TIME_WAIT.
    log(peer, " done");
}

lab::Fd open_listener(const lab::Endpoint& local, const Options& options) {
    // BEGIN SOLUTION: create the listening socket with socket() (SOCK_STREAM), set SO_REUSEADDR
    //   (if options.reuseaddr) and SO_REUSEPORT (if options.reuseport) with setsockopt()
    //   BEFORE bind(), then bind() to `local` and listen() with kBacklog; on failure
    //   lab::die("socket", "setsockopt SO_REUSEADDR", "setsockopt SO_REUSEPORT",
    //   "bind" or "listen", ...), and return the socket
    // STUB: return lab::todo<lab::Fd>("lab 06: socket(), setsockopt(), bind() and listen()");
    // 1. socket()
    lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    // 2. setsockopt(), before bind(): bind() is where the kernel checks the port.
    //    SO_REUSEADDR: bind even though old connections on this port are in TIME_WAIT.
    //    SO_REUSEPORT: let other sockets (with the same option and owner) listen here too.
    const int on = 1;
    if (options.reuseaddr &&
        setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }
    if (options.reuseport &&
        setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEPORT");
    }
    // 3. bind(): without SO_REUSEADDR this is where "Address already in use" appears.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // 4. listen()
    if (listen(listen_fd.get(), kBacklog) == -1) {
        lab::die("listen", lab::format_address(local));
    }
    return listen_fd;
    // END SOLUTION
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-bytes", &options.max_bytes, 1, kMostBytes);
    args.seconds("--timeout", &options.timeout);
    args.flag("--no-reuseaddr", &options.reuseaddr, false);
    args.flag("--reuseport", &options.reuseport);
    args.flag("--quiet", &options.quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const lab::Log log(options.quiet);

    lab::handle_signals();
    // SIGINT and SIGTERM stay blocked except while we wait in ppoll() (see wait_readable).
    sigset_t wait_mask;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &wait_mask);

    const lab::Fd listen_fd = open_listener(local, options);
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);

    // One client at a time: the lesson is the close sequence, not concurrency.
    while (wait_readable(listen_fd.get(), -1, wait_mask) == Wait::kReady) {
        // 5. accept()
        lab::Endpoint peer;
        lab::Fd conn(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_CLOEXEC));
        if (!conn) {
            lab::warn("accept", lab::format_address(*bound));
            continue;
        }
        serve(std::move(conn), lab::format_address(peer), options, wait_mask, log);
    }
    log("pid ", getpid(), ": stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
