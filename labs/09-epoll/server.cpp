// 09-epoll server: a TCP echo server for thousands of clients in one thread, built on epoll.
//
// The kernel keeps the list of watched sockets (the interest list) and hands back only the
// ready ones, so a wake-up costs what is ready, not what is connected. Two modes:
//   --mode lt  level-triggered (default): a socket is reported for as long as it is ready,
//              so one read() per report is enough; the kernel reminds us of the rest.
//   --mode et  edge-triggered: a socket is reported when it becomes ready, so we read until
//              EAGAIN or the rest is never reported again. A byte budget per wake-up and a
//              ready list keep one fast sender from starving everyone else.
// A connection costs one small Conn in a vector indexed by its descriptor; its output buffer
// exists only while an echo waits for the peer to read it.
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9909;
constexpr std::size_t kReadChunk = 65536;          // 64 KiB per read(), one reusable buffer
constexpr std::size_t kEtBudget = 4 * kReadChunk;  // ET: bytes per connection per turn
constexpr int kMaxEvents = 1024;                   // events taken per epoll_pwait()
constexpr long long kDefaultMaxBuffer = 1 << 20;   // --max-buffer: pending echo per client
constexpr long long kReservedFds = 8;  // stdio, listener, epoll, slack: never for clients
constexpr int kAcceptRetryMs = 1000;   // out of descriptors: try accepting again this often
constexpr std::string_view kBusy = "server busy\n";

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--mode lt|et] [--max-clients N]
              [--max-buffer BYTES] [--quiet]
       server [PORT]
TCP echo server on epoll: one thread, many clients.
  -H, --host ADDR        address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N           port to bind (default 9909; 0 lets the kernel choose)
      --mode lt|et       level-triggered (default) or edge-triggered epoll
      --max-clients N    clients at once; one more gets "server busy" and is closed
                         (default: the descriptor limit minus 8)
      --max-buffer BYTES stop reading a client while this much echo waits (default 1 MiB)
      --quiet            no log line per event
      --help             this text
)";

struct Options {
    bool edge = false;  // --mode et
    std::size_t max_clients = 0;
    std::size_t max_buffer = kDefaultMaxBuffer;
    bool quiet = false;
};

// Everything the server knows about one connection: 48 bytes while idle.
struct Conn {
    std::string out;           // echo the peer has not taken yet; no heap while it is short
    std::uint32_t sent = 0;    // bytes of `out` already written
    std::uint32_t events = 0;  // LT: the interest set registered with epoll
    lab::Fd fd;                // closed (and so removed from epoll) with the Conn
    bool read_closed = false;  // the peer sent FIN: close once `out` has drained
    bool queued = false;       // ET: waiting on the ready list for another turn

    [[nodiscard]] std::size_t pending() const { return out.size() - sent; }
};
static_assert(sizeof(Conn) <= 48, "an idle connection must stay cheap");

class Server {
  public:
    Server(lab::Fd listen_fd, lab::Fd epoll_fd, const Options& options)
        : listen_fd_(std::move(listen_fd)),
          epoll_fd_(std::move(epoll_fd)),
          opt_(options),
          log_(options.quiet),
          buffer_(kReadChunk),
          events_(kMaxEvents) {}

    void run(const sigset_t& wait_mask) {
        while (!lab::stop_requested()) {
            // BEGIN SOLUTION: wait in epoll_pwait() and dispatch its events; call
            //   epoll_pwait(epoll_fd_.get(), events_.data(), kMaxEvents, timeout, &wait_mask)
            //   with the timeout 0 while ready_ is not empty, -1 while accepting_, else
            //   kAcceptRetryMs; continue on EINTR, lab::die("epoll_pwait")
            //   on other errors, and on 0 with accepting_ false call set_accepting(true).
            //   For each event (its fd is in data.fd): remember that the listener was
            //   reported, or on_event(fd, events) for a client whose conns_ entry still has
            //   its fd (one closed earlier in the batch has not). After the batch, and only
            //   then, accept_clients() if the listener was reported
            const int timeout = !ready_.empty() ? 0 : accepting_ ? -1 : kAcceptRetryMs;
            // 5. epoll_pwait(): SIGINT and SIGTERM are blocked everywhere else and unblocked
            //    only inside this call, atomically, so a stop request can never slip in
            //    between the flag check above and the wait (the race plain epoll_wait has).
            const int n =
                epoll_pwait(epoll_fd_.get(), events_.data(), kMaxEvents, timeout, &wait_mask);
            if (n == -1 && errno == EINTR) continue;  // the handler ran: look at the flag
            if (n == -1) lab::die("epoll_pwait");
            if (n == 0 && !accepting_) set_accepting(true);
            bool incoming = false;
            for (int i = 0; i < n; ++i) {
                const int fd = events_[i].data.fd;
                if (fd == listen_fd_.get()) {
                    incoming = true;
                } else if (conns_[static_cast<std::size_t>(fd)].fd) {  // not closed meanwhile
                    on_event(fd, events_[i].events);
                }
            }
            // Accept after the batch: a new client may get the number of one closed above,
            // and must not receive the old one's events.
            if (incoming) accept_clients();
            // END SOLUTION
            serve_ready_list();
        }
        log_("stopping on ", lab::stop_signal_name());
    }

  private:
    Conn& conn(int fd) { return conns_[static_cast<std::size_t>(fd)]; }

    void on_event(int fd, std::uint32_t events) {
        if ((events & (EPOLLERR | EPOLLHUP)) != 0) {  // reset, or gone: nothing to deliver
            int err = 0;
            socklen_t size = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size);
            return close_client(fd, err != 0 ? std::strerror(err) : "hang-up");
        }
        serve(fd, (events & EPOLLIN) != 0, (events & EPOLLRDHUP) != 0);
    }

    // 6. accept4() until EAGAIN: one report may stand for many waiting connections.
    void accept_clients() {
        while (accepting_) {
            lab::Endpoint peer;
            lab::Fd client(
                accept4(listen_fd_.get(), peer.addr(), &peer.size, SOCK_NONBLOCK | SOCK_CLOEXEC));
            if (!client) {
                if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                    // The connection stays queued in the kernel. Accepting again at once
                    // would fail again, a busy loop: stop watching the listener instead.
                    if (!told_full_) {  // once, not at every retry
                        lab::note("accept: " + std::string(std::strerror(errno)) +
                                  "; pausing accepts until a client leaves");
                    }
                    told_full_ = true;
                    set_accepting(false);
                } else if (errno == EAGAIN) {
                    told_full_ = false;  // caught up: the shortage, if any, is over
                } else {
                    lab::warn("accept");
                }
                return;
            }
            if (clients_ >= opt_.max_clients) {
                // Best effort, never retried: a fresh socket has room for 12 bytes.
                const ssize_t told = write(client.get(), kBusy.data(), kBusy.size());
                log_("refused ", lab::format_address(peer), ": server busy",
                     told == -1 ? " (could not tell it)" : "");
                continue;  // the Fd closes it
            }
            add_client(std::move(client), peer);
        }
    }

    // 7. epoll_ctl(ADD): LT watches input only; ET watches everything once, for good.
    void add_client(lab::Fd client, const lab::Endpoint& peer) {
        // BEGIN SOLUTION: register the client with epoll_ctl(EPOLL_CTL_ADD); grow conns_ so
        //   that conns_[fd] exists, watch EPOLLIN | EPOLLRDHUP in LT mode and EPOLLIN |
        //   EPOLLOUT | EPOLLRDHUP | EPOLLET in ET mode (opt_.edge) with data.fd = fd; if
        //   epoll_ctl() fails, lab::warn("epoll_ctl", PEER) and return (the
        //   Fd closes it); else move the Fd into conn(fd).fd, store the events in
        //   conn(fd).events, count it in clients_ and log "client PEER connected as fd N"
        //   (PEER from lab::format_address())
        const int fd = client.get();
        if (static_cast<std::size_t>(fd) >= conns_.size()) {
            conns_.resize(static_cast<std::size_t>(fd) + 1);
        }
        epoll_event event{};
        event.events = opt_.edge ? EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET : EPOLLIN | EPOLLRDHUP;
        event.data.fd = fd;
        if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &event) == -1) {
            return lab::warn("epoll_ctl", lab::format_address(peer));
        }
        conn(fd).fd = std::move(client);
        conn(fd).events = event.events;
        ++clients_;
        log_("client ", lab::format_address(peer), " connected as fd ", fd);
        // END SOLUTION
    }

    // One connection's turn: send what waits, then read and echo, up to a budget.
    void serve(int fd, bool readable, bool peer_shut) {
        Conn& c = conn(fd);
        if (!flush(fd, c)) return close_client(fd, std::strerror(errno));
        std::size_t budget = opt_.edge ? kEtBudget : kReadChunk;
        while (readable && !c.read_closed && c.pending() < opt_.max_buffer) {
            if (budget == 0) {  // ET: more may be waiting; others get their turn first
                if (!c.queued) ready_.push_back(fd);
                c.queued = true;
                break;
            }
            const std::size_t want = std::min(budget, buffer_.size());
            const ssize_t n = read(fd, buffer_.data(), want);
            if (n == -1 && errno == EINTR) continue;
            if (n == -1 && errno == EAGAIN) break;  // drained: the next edge will come
            if (n == -1) return close_client(fd, std::strerror(errno));
            // EPOLLRDHUP: the FIN is already queued, so a short read was the last data.
            if (n == 0 || (peer_shut && static_cast<std::size_t>(n) < want)) c.read_closed = true;
            if (n == 0) break;
            log_("fd ", fd, ": ", n, " bytes");
            if (!echo(fd, c, static_cast<std::size_t>(n))) {
                return close_client(fd, std::strerror(errno));
            }
            budget -= static_cast<std::size_t>(n);
            if (!opt_.edge) break;  // LT: one read per report; epoll reports the rest
        }
        if (c.read_closed && c.pending() == 0) return close_client(fd, "end of stream");
        if (!opt_.edge) watch(fd, c);
    }

    // Writes the queued echo until it is gone or the socket is full (EAGAIN).
    static bool flush(int fd, Conn& c) {
        while (c.pending() > 0) {
            const ssize_t n = write(fd, c.out.data() + c.sent, c.pending());
            if (n == -1 && errno == EINTR) continue;
            if (n == -1) return errno == EAGAIN;
            c.sent += static_cast<std::uint32_t>(n);
        }
        std::string().swap(c.out);  // drained: give the memory back, not just clear()
        c.sent = 0;
        return true;
    }

    // Sends n bytes of buffer_ back: at once if nothing is queued, else after the queue.
    bool echo(int fd, Conn& c, std::size_t n) {
        std::size_t done = 0;
        while (c.pending() == 0 && done < n) {
            const ssize_t w = write(fd, buffer_.data() + done, n - done);
            if (w == -1 && errno == EINTR) continue;
            if (w == -1 && errno == EAGAIN) break;
            if (w == -1) return false;
            done += static_cast<std::size_t>(w);
        }
        if (done == n) return true;
        if (c.sent > 0 && c.sent >= c.out.size() / 2) {  // drop the sent half, amortised
            c.out.erase(0, c.sent);
            c.sent = 0;
        }
        c.out.append(buffer_.data() + done, n - done);
        return true;
    }

    // LT: ask epoll for what this connection can use now, and nothing more. Watching
    // EPOLLOUT with nothing to send, or EPOLLIN while we refuse to read, would report the
    // socket on every single call: a busy loop.
    void watch(int fd, Conn& c) {
        std::uint32_t want = 0;
        if (c.pending() > 0) want |= EPOLLOUT;
        if (!c.read_closed && c.pending() < opt_.max_buffer) want |= EPOLLIN | EPOLLRDHUP;
        if (want == c.events) return;
        epoll_event event{};
        event.events = want;
        event.data.fd = fd;
        if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &event) == -1) {
            return close_client(fd, std::strerror(errno));
        }
        c.events = want;
    }

    // ET: give each connection that used up its budget another turn, oldest first.
    void serve_ready_list() {
        ready_now_.swap(ready_);
        for (const int fd : ready_now_) {
            if (!conn(fd).queued) continue;  // closed since then
            conn(fd).queued = false;
            serve(fd, true, false);
        }
        ready_now_.clear();
    }

    // 8. close(): resetting the Conn closes the fd, which also removes it from epoll.
    void close_client(int fd, std::string_view why) {
        conn(fd) = Conn{};
        --clients_;
        log_("fd ", fd, " closed: ", why);
        if (!accepting_) set_accepting(true);  // a descriptor is free again
    }

    void set_accepting(bool on) {
        epoll_event event{};
        event.events = on ? std::uint32_t{EPOLLIN} : 0;  // 0: watched, never reported
        event.data.fd = listen_fd_.get();
        if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &event) == -1) {
            lab::die("epoll_ctl");
        }
        accepting_ = on;
    }

    lab::Fd listen_fd_;
    lab::Fd epoll_fd_;
    Options opt_;
    lab::Log log_;
    std::vector<Conn> conns_;   // indexed by descriptor number
    std::vector<char> buffer_;  // every read() lands here first
    std::vector<epoll_event> events_;
    std::vector<int> ready_;      // ET: connections owed another turn
    std::vector<int> ready_now_;  // the turn being served (swapped, so never reallocated)
    std::size_t clients_ = 0;
    bool accepting_ = true;
    bool told_full_ = false;  // out of descriptors was reported; the queue is not empty yet
};

Options parse_options(int argc, char** argv, lab::Args& args) {
    Options options;
    long long max_clients = 0;
    auto max_buffer = kDefaultMaxBuffer;
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    std::string mode = "lt";
    args.option("--mode", &mode);
    args.option("--max-clients", &max_clients, 1, 1'000'000);
    args.option("--max-buffer", &max_buffer, 1, 1LL << 30);
    args.flag("--quiet", &options.quiet);
    args.parse(argc, argv);
    if (mode != "lt" && mode != "et") args.usage_error("bad mode '" + mode + "' (want lt or et)");
    options.edge = mode == "et";
    if (!args.given("--max-clients")) {  // as many as the descriptor limit allows
        rlimit limit{};
        getrlimit(RLIMIT_NOFILE, &limit);
        const auto fds = static_cast<long long>(std::min<rlim_t>(limit.rlim_cur, 1'000'000));
        max_clients = std::max(1LL, fds - kReservedFds);
    }
    options.max_clients = static_cast<std::size_t>(max_clients);
    options.max_buffer = static_cast<std::size_t>(max_buffer);
    return options;
}

}  // namespace

int main(int argc, char** argv) {
    lab::Args args(kUsage);
    const Options options = parse_options(argc, argv, args);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const lab::Log log(options.quiet);

    lab::handle_signals();
    // Block the stop signals; epoll_pwait() unblocks them with wait_mask while it waits.
    sigset_t wait_mask;  // nothing blocked: the stop signals may land anywhere
    pthread_sigmask(SIG_SETMASK, nullptr, &wait_mask);

    // BEGIN SOLUTION: create the listening socket with socket(), non-blocking
    //   (local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), set SO_REUSEADDR with
    //   setsockopt(), bind() it to `local` and listen() with SOMAXCONN; on failure
    //   lab::die("socket" / "bind" / "listen", ...)
    // STUB: lab::Fd listen_fd = lab::todo<lab::Fd>("lab 09: socket(), bind() and listen()");
    // 1. socket(): non-blocking, so no accept() can ever stall the loop.
    lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    const int on = 1;  // restart at once, despite old connections in TIME_WAIT (lab 06)
    setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);

    // 2. bind() and 3. listen(): a long queue, so a burst of connects waits for us.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    if (listen(listen_fd.get(), SOMAXCONN) == -1) {
        lab::die("listen", lab::format_address(local));
    }
    // END SOLUTION

    // 4. epoll_create1() and the listener in its interest list, level-triggered in both
    //    modes: accept4() runs until EAGAIN anyway, and a paused listener must come back.
    // BEGIN SOLUTION: create the epoll instance with epoll_create1(EPOLL_CLOEXEC) and add
    //   the listener with epoll_ctl(EPOLL_CTL_ADD), EPOLLIN (level-triggered) and data.fd =
    //   listen_fd.get(); on failure lab::die("epoll_create1" / "epoll_ctl")
    // STUB: lab::Fd epoll_fd = lab::todo<lab::Fd>("lab 09: epoll_create1() and epoll_ctl(ADD)");
    lab::Fd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_fd) lab::die("epoll_create1");
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = listen_fd.get();
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, listen_fd.get(), &event) == -1) {
        lab::die("epoll_ctl");
    }
    // END SOLUTION

    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);
    log("mode ", options.edge ? "et" : "lt", ", at most ", options.max_clients, " clients, ",
        options.max_buffer, " bytes of pending echo each");

    Server server(std::move(listen_fd), std::move(epoll_fd), options);
    server.run(wait_mask);
    return lab::kExitOk;
}
