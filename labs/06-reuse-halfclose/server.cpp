// 06-reuse-halfclose server: reads everything a client sends until the client's FIN (it
// half-closed with shutdown(SHUT_WR)), sends it all back on the half still open, and
// closes. One client at a time: the lesson is how a connection ends. Options: SO_REUSEADDR
// (on by default, --no-reuseaddr shows why) and SO_REUSEPORT (--reuseport: several servers
// on one port, so every log line carries the pid).
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9906;
constexpr int kBacklog = SOMAXCONN;
constexpr long long kDefaultMaxBytes = 16LL << 20;  // 16 MiB
constexpr long long kMaxBytesLimit = 1LL << 30;     // 1 GiB
constexpr double kDefaultIdleTimeout = 60;
constexpr std::size_t kChunk = 65536;  // bytes asked of one read()

constexpr const char* kUsage = R"(usage: server [OPTIONS] [PORT]
Half-close echo server: reads until the client shuts down its sending side, then sends
everything back and closes. One client at a time.
  -H, --host ADDR             address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N                port to listen on (default 9906; 0 lets the kernel choose)
      --max-bytes N           most bytes taken from one client (default 16 MiB, at most 1 GiB)
      --idle-timeout SECONDS  drop a client that neither sends nor reads for that long (60)
      --no-reuseaddr          leave SO_REUSEADDR off: a restart fails while TIME_WAIT lingers
      --reuseport             set SO_REUSEPORT: several servers may listen on one port
      --quiet                 no log line per event
      --help                  this text
)";

// A connected client: its socket, its address, and what it sent.
struct Client {
    lab::Fd conn;
    std::string peer;
    std::vector<char> data;
};

struct Options {
    long long max_bytes = kDefaultMaxBytes;
    double idle_timeout = kDefaultIdleTimeout;
    bool reuseaddr = true;
    bool reuseport = false;
    bool quiet = false;
};

static bool read_to_end(Client& client, const Options& options, std::string* why);
static bool write_reply(const Client& client);
static void set_idle_timeout(int fd, double seconds);
static std::string dropped(int err, const Options& options);
static std::string refuse_over_limit(const Client& client, std::size_t limit);

int main(int argc, char** argv) {
    Options options;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-bytes", &options.max_bytes, 1, kMaxBytesLimit);
    args.seconds("--idle-timeout", &options.idle_timeout);
    args.flag("--no-reuseaddr", &options.reuseaddr, false);
    args.flag("--reuseport", &options.reuseport);
    args.flag("--quiet", &options.quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const std::string where = lab::format_address(local);
    const lab::Log log(options.quiet);
    const std::string pid = "pid " + std::to_string(getpid()) + ": ";
    lab::handle_signals();

    // 1. socket()
    const lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    // 2. setsockopt(), before bind(): bind() is where the kernel checks the port.
    //    SO_REUSEADDR: bind although old connections on this port are in TIME_WAIT.
    //    SO_REUSEPORT: let other sockets (with the option, of the same user) listen here too.
    // TASK 06.reuse
    const int on = 1;
    if (options.reuseaddr &&
        setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }
    if (options.reuseport &&
        setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEPORT");
    }
    // END TASK
    // 3. bind(): without SO_REUSEADDR, this is where "Address already in use" appears.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) lab::die("bind", where);
    // 4. listen()
    if (listen(listen_fd.get(), kBacklog) == -1) lab::die("listen", where);
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);

    while (!lab::stop_requested()) {
        // 5. accept(): one client at a time. A stop signal interrupts it (EINTR).
        lab::Endpoint peer;
        Client client{lab::Fd(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_CLOEXEC)),
                      lab::format_address(peer),
                      {}};
        if (!client.conn) {
            if (errno != EINTR && errno != ECONNABORTED) lab::warn("accept", where);
            continue;
        }
        log(pid, "client ", client.peer, " connected");
        set_idle_timeout(client.conn.get(), options.idle_timeout);
        // 6. read() until the client's FIN: its shutdown(SHUT_WR), "that was all".
        std::string why;
        if (!read_to_end(client, options, &why)) {
            log(pid, "client ", client.peer, " ", why);
            continue;  // the Fd closes the connection
        }
        log(pid, "client ", client.peer, " half-closed after ", client.data.size(), " bytes");
        // 7. write(): the client's sending half is shut, ours is open: the reply goes out.
        if (!write_reply(client)) {
            log(pid, "client ", client.peer, " ", dropped(errno, options));
            continue;
        }
        // 8. close(): our FIN answers the client's. It sent the first FIN, so TIME_WAIT
        //    lands on its side, not on our port.
        close(client.conn.release());
        log(pid, "client ", client.peer, " left after ", client.data.size(), " bytes");
    }
    log(pid, "stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

// Reads into client.data until read() returns 0, the client's FIN: true. False, with the
// reason in *why, when the client stalls, resets or sends more than --max-bytes (one byte
// more is asked for, to tell "exactly the limit" from "over it"), or a stop signal comes.
static bool read_to_end(Client& client, const Options& options, std::string* why) {
    // TASK 06.read-to-end
    const auto limit = static_cast<std::size_t>(options.max_bytes);
    std::vector<char>& data = client.data;
    while (!lab::stop_requested() && data.size() <= limit) {
        const std::size_t have = data.size();
        data.resize(have + std::min(kChunk, limit + 1 - have));
        const ssize_t n = read(client.conn.get(), data.data() + have, data.size() - have);
        data.resize(have + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
        if (n == 0) return true;               // end of stream: the client's FIN
        if (n == -1 && errno != EINTR) break;  // EINTR: a signal, back to the loop's check
    }
    *why = data.size() > limit ? refuse_over_limit(client, limit) : dropped(errno, options);
    return false;
    // END TASK
}

// Writes all of client.data, short write after short write. The stop flag is checked each
// time round, not only after EINTR: a peer that reads slowly lets every write() take a few
// bytes before a signal lands, and would otherwise hold up a stop for as long as it likes.
static bool write_reply(const Client& client) {
    std::size_t done = 0;
    while (done < client.data.size() && !lab::stop_requested()) {
        const ssize_t n =
            write(client.conn.get(), client.data.data() + done, client.data.size() - done);
        if (n == -1 && errno != EINTR) return false;
        if (n > 0) done += static_cast<std::size_t>(n);
    }
    return done == client.data.size();
}

// The fault: a client that sends nothing, or never its FIN, or never reads the reply,
// holding this one-at-a-time server for ever. The answer: SO_RCVTIMEO and SO_SNDTIMEO.
static void set_idle_timeout(int fd, double seconds) {
    const timeval limit = lab::to_timeval(seconds);  // rounded up: 0 would mean "never"
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);  // read() fails with EAGAIN
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);  // write() too
}

// Why a client was dropped: we are stopping, it was idle too long (EAGAIN), or an error.
static std::string dropped(int err, const Options& options) {
    if (lab::stop_requested()) return "dropped: server stopping, closing first";
    if (err == EAGAIN) return "dropped: idle for " + lab::seconds_text(options.idle_timeout);
    return std::string("dropped: ") + std::strerror(err);
}

// The fault: a client that sends more than --max-bytes. The answer: say so, then close.
static std::string refuse_over_limit(const Client& client, std::size_t limit) {
    const std::string reply = "server: more than " + std::to_string(limit) + " bytes; closing\n";
    (void)lab::write_all(client.conn.get(), reply);  // best effort: it may be gone already
    return "dropped: more than " + std::to_string(limit) + " bytes";
}
