// 09-epoll server: a TCP echo server for thousands of clients in one thread, on epoll. The
// kernel keeps the watched sockets (the interest list) and hands back only the ready ones,
// so a wake-up costs what is ready, not what is connected. The lesson reads first (main,
// then the loop's steps 5 to 9); the defences follow, each answering one fault.
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9909;
constexpr int kBacklog = SOMAXCONN;  // the kernel caps it at net.core.somaxconn
constexpr std::string_view kBusyReply = "server busy\n";
constexpr int kMaxEvents = 1024;                   // events taken per epoll_wait()
constexpr std::size_t kReadChunk = 65536;          // bytes per read(), into one shared buffer
constexpr std::size_t kEtBudget = 4 * kReadChunk;  // ET: bytes per client per turn
constexpr long long kDefaultMaxBuffer = 1 << 20, kMaxBufferLimit = 1 << 26;
constexpr long long kMaxClientsLimit = 1'000'000;
constexpr long long kReservedFds = 8;  // stdio, listener, epoll and slack: never clients
constexpr double kDefaultIdleSeconds = 60;

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--mode lt|et] [--max-clients N]
              [--max-buffer BYTES] [--idle-timeout SECONDS] [--quiet]
       server [PORT]
TCP echo server on epoll, one thread: level-triggered (--mode lt, the default) or
edge-triggered (--mode et). -H/--host ADDR and -p/--port N: where it listens (default
127.0.0.1 port 9909; :: or 0.0.0.0 for every address; port 0 lets the kernel choose).
  --max-clients N         one more is told "server busy" (default: descriptor limit - 8)
  --max-buffer BYTES      stop reading a client while this much echo waits (1 MiB)
  --idle-timeout SECONDS  drop a client that neither sends nor reads this long (60)
  --quiet                 no log line per event
)";

struct Options {
    std::string mode = "lt";  // or "et"
    long long max_clients = 0, max_buffer = kDefaultMaxBuffer;
    double idle_seconds = kDefaultIdleSeconds;
    bool quiet = false;
};

void serve_clients(lab::Fd listen_fd, lab::Fd epoll_fd, const Options& opt);  // 5. to 9.

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    rlimit fds{};  // the default --max-clients: what the descriptor limit leaves room for
    getrlimit(RLIMIT_NOFILE, &fds);
    opt.max_clients = std::max<long long>(
        1, static_cast<long long>(std::min<rlim_t>(fds.rlim_cur, kMaxClientsLimit)) - kReservedFds);
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--mode", &opt.mode);
    args.option("--max-clients", &opt.max_clients, 1, kMaxClientsLimit);
    args.option("--max-buffer", &opt.max_buffer, 1, kMaxBufferLimit);
    args.seconds("--idle-timeout", &opt.idle_seconds);
    args.flag("--quiet", &opt.quiet);
    args.parse(argc, argv);
    if (opt.mode != "lt" && opt.mode != "et") args.usage_error("bad mode '" + opt.mode + "'");
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    lab::handle_signals();  // SIGINT, SIGTERM: epoll_wait() fails with EINTR, the loop ends

    // 1. socket(): non-blocking, so that no accept4() can ever stall the loop. SO_REUSEADDR:
    //    restart at once, despite old connections in TIME_WAIT (lab 06).
    lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int lfd = listen_fd.get();
    const int on = 1;
    if (lfd == -1) lab::die("socket");
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) lab::die("setsockopt");
    // 2. bind() and 3. listen(): a long queue, so a burst of connects waits for the loop.
    if (bind(lfd, local.addr(), local.size) == -1) lab::die("bind", lab::format_address(local));
    if (listen(lfd, kBacklog) == -1) lab::die("listen");

    // 4. epoll_create1(), and the listener into its interest list. Edge-triggered: it is
    //    reported when connections arrive, and accept_clients() takes them all each time.
    // TASK 09.epoll-create
    // KIT: lab::Fd epoll_fd = lab::todo<lab::Fd>("09.epoll-create");
    lab::Fd epoll_fd(epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_fd) lab::die("epoll_create1");
    epoll_event event{.events = EPOLLIN | EPOLLET, .data = {.fd = lfd}};
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, lfd, &event) == -1) lab::die("epoll_ctl");
    // END TASK
    lab::print_ready("tcp", lab::local_endpoint(lfd).value_or(local));
    lab::Log(opt.quiet)("mode ", opt.mode, ", at most ", opt.max_clients, " clients");
    serve_clients(std::move(listen_fd), std::move(epoll_fd), opt);
    return lab::kExitOk;
}

namespace {

// One connection, in a table indexed by its descriptor number: 48 bytes while idle.
struct Client {
    lab::Fd fd;                        // closing it also takes it out of the interest list
    std::uint32_t events = 0;          // what epoll reports for it (LT changes it)
    std::unique_ptr<std::string> out;  // echo the peer has not taken yet, while there is some
    long long idle_at = 0;             // dropped then (steady clock, ms) unless active
    int older = -1, newer = -1;        // neighbours in the list by last activity
    std::uint64_t bytes = 0;           // read from it, for the log
    bool read_closed = false;          // the peer sent FIN: close once `out` has drained
};

class Server {
  public:
    Server(lab::Fd listen_fd, lab::Fd epoll_fd, Options opt)
        : listen_fd_(std::move(listen_fd)), epoll_fd_(std::move(epoll_fd)), opt_(std::move(opt)) {}

    // 5. The loop, with three kinds of event: the listener (new connections), the clients
    //    (bytes, room to write, FIN, reset) and the timers: the earliest idle deadline sets
    //    how long epoll_wait() may sleep. A stop signal makes the wait fail with EINTR.
    void run() {
        while (!lab::stop_requested()) {
            // TASK 09.wait
            const int n = epoll_wait(epoll_fd_.get(), events_.data(), kMaxEvents, timeout());
            if (n == -1 && errno == EINTR) continue;  // a signal: back to the check above
            if (n == -1) lab::die("epoll_wait");
            now_ = now_ms();
            bool incoming = false;         // accept after the batch: a new client may get the
            for (int i = 0; i < n; ++i) {  // number of one closed in it, not its events
                const int fd = events_[i].data.fd;
                if (fd == listen_fd_.get()) incoming = true;
                if (fd != listen_fd_.get() && client(fd).fd) serve(fd, events_[i].events);
            }
            // END TASK
            drop_idle_clients();
            if (incoming || retry_accept_) accept_clients();
        }
        log_("stopping on ", lab::stop_signal_name());
    }

  private:
    // 6. accept4() until EAGAIN: one report may stand for many waiting connections. One
    //    over --max-clients is told, best effort (a fresh socket has room), and closed.
    void accept_clients() {
        for (retry_accept_ = false; !lab::stop_requested();) {
            lab::Endpoint peer;
            lab::Fd conn(accept4(listen_fd_.get(), peer.addr(), &peer.size, SOCK_NONBLOCK));
            if (!conn) return accept_failed();
            if (count_ < opt_.max_clients) {
                add_client(std::move(conn), peer);
            } else if (write(conn.get(), kBusyReply.data(), kBusyReply.size()) >= 0) {
                log_("refused ", lab::format_address(peer), ": server busy");
            }
        }
    }

    // 7. epoll_ctl(ADD): LT watches for input only; ET for everything, once and for good.
    // TASK 09.add-client
    void add_client(lab::Fd conn, const lab::Endpoint& peer) {
        const int fd = conn.get();
        const std::uint32_t et = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLOUT | EPOLLET;
        epoll_event event{.events = edge() ? et : EPOLLIN, .data = {.fd = fd}};
        if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &event) == -1) {
            return lab::warn("epoll_ctl", lab::format_address(peer));  // conn closes it
        }
        if (static_cast<std::size_t>(fd) >= clients_.size()) clients_.resize(fd + 1UL);
        client(fd).fd = std::move(conn);
        client(fd).events = event.events;
        ++count_;
        touch(fd);
        if (!opt_.quiet) names_.resize(clients_.size());
        if (!opt_.quiet) names_[static_cast<std::size_t>(fd)] = lab::format_address(peer);
        log_("client ", name(fd), " connected: fd ", fd);
    }
    // END TASK

    // 8. Serve one client: send what waits, then read and echo. LT reads once per report;
    //    ET until the socket is drained or its budget for this turn runs out. A reset
    //    (EPOLLERR, EPOLLHUP: always reported) makes the next read() or write() fail.
    void serve(int fd, std::uint32_t events) {
        Client& c = client(fd);
        if (!send(fd, {})) return close_client(fd, std::strerror(errno));
        std::size_t budget = edge() ? kEtBudget : kReadChunk;
        while ((events & ~std::uint32_t{EPOLLOUT}) != 0 && !c.read_closed && !full(fd)) {
            if (budget == 0) return rearm(fd);
            const std::size_t asked = std::min(budget, kReadChunk);
            const ssize_t n = read(fd, buffer_.data(), asked);
            if (n == -1 && errno == EAGAIN) break;  // drained (never EINTR: it never sleeps)
            if (n == -1) return close_client(fd, std::strerror(errno));
            c.read_closed = n == 0;  // the peer's FIN: the end of its stream
            if (n == 0) break;
            log_("from ", name(fd), ": ", n, " bytes");
            c.bytes += static_cast<std::uint64_t>(n);
            touch(fd);
            if (!send(fd, {buffer_.data(), static_cast<std::size_t>(n)})) {
                return close_client(fd, std::strerror(errno));
            }
            budget -= static_cast<std::size_t>(n);
            if (!edge()) break;  // LT: one read per report; epoll reports the rest
            if (!drained(events, static_cast<std::size_t>(n), asked)) continue;
            c.read_closed = (events & EPOLLRDHUP) != 0;  // the FIN came first: that was all
            break;
        }
        if (c.read_closed && !c.out) return close_client(fd, {});
        if (!edge()) watch(fd);
    }

    // ET: after a read() that returned n of the `asked` bytes, is the socket drained? A read
    // failing with EAGAIN says so for certain, at the price of one more read() per wake-up.
    // A short read says so too (TCP hands over all it holds, and later bytes raise a new
    // edge), unless urgent data is pending: read() stops short at the urgent mark, with
    // bytes behind it. epoll reports EPOLLPRI while there is such a mark.
    static bool drained(std::uint32_t events, std::size_t n, std::size_t asked) {
        // TASK 09.drained
        return n < asked && (events & EPOLLPRI) == 0;
        // END TASK
    }

    // 9. close(): resetting the Client closes its descriptor, which also takes it out of
    //    the interest list (see Pitfalls for when it does not). A descriptor is free again.
    void close_client(int fd, std::string_view why) {
        if (why.empty()) log_("client ", name(fd), " left after ", client(fd).bytes, " bytes");
        if (!why.empty()) log_("client ", name(fd), " dropped: ", why);
        unlink(fd);
        client(fd) = Client{};
        --count_;
        retry_accept_ = told_full_;  // out of descriptors, connections may wait: take them
    }

    // Backpressure: the echo goes out after what is queued, as much as the socket takes;
    // the rest waits in `out` (which exists only then). At --max-buffer serve() stops
    // reading the client, so its TCP window closes until it reads.
    bool send(int fd, std::string_view bytes) {
        std::unique_ptr<std::string>& out = client(fd).out;
        if (out) bytes = out->append(bytes);
        const ssize_t n = bytes.empty() ? 0 : write(fd, bytes.data(), bytes.size());
        if (n == -1 && errno != EAGAIN) return false;
        const auto done = static_cast<std::size_t>(std::max<ssize_t>(n, 0));
        if (done > 0 && out) touch(fd);  // the peer reads: it is not idle
        if (!out && done < bytes.size()) out = std::make_unique<std::string>(bytes);
        if (out && out->erase(0, done).empty()) out.reset();
        return true;
    }

    // LT busy loop: EPOLLOUT with nothing to send, or EPOLLIN while serve() will not read,
    // would report the socket on every call. Ask for what can be used now, and no more.
    void watch(int fd) {
        Client& c = client(fd);
        const auto in = c.read_closed || full(fd) ? 0U : std::uint32_t{EPOLLIN};
        const auto want = (c.out ? std::uint32_t{EPOLLOUT} : 0U) | in;
        if (want != c.events && !modify(fd, want)) close_client(fd, std::strerror(errno));
    }

    // ET starvation: a client sending as fast as it is read would keep "read until drained"
    // going for ever. After kEtBudget bytes, EPOLL_CTL_MOD puts it back at the end of the
    // kernel's ready list: epoll_wait() reports the others first, then it again.
    void rearm(int fd) {
        if (!modify(fd, client(fd).events)) close_client(fd, std::strerror(errno));
    }

    // Idle clients hold descriptors and places for nothing. All have the same timeout, so
    // the list by last activity (touch() moves a client to the back) is in deadline order.
    void touch(int fd) {
        unlink(fd);
        Client& c = client(fd);
        c.idle_at = now_ + idle_ms_;
        c.older = std::exchange(newest_, fd);
        (c.older == -1 ? oldest_ : client(c.older).newer) = fd;
    }
    void unlink(int fd) {
        Client& c = client(fd);
        if (c.older == -1 && oldest_ != fd) return;  // not in the list
        (c.older == -1 ? oldest_ : client(c.older).newer) = c.newer;
        (c.newer == -1 ? newest_ : client(c.newer).older) = c.older;
        c.older = c.newer = -1;
    }
    void drop_idle_clients() {
        const std::string why = "idle for " + lab::seconds_text(opt_.idle_seconds);
        while (oldest_ != -1 && client(oldest_).idle_at <= now_)
            close_client(oldest_, why);
    }
    int timeout() {  // ms until the earliest idle deadline; -1 (none): for ever
        return oldest_ == -1 ? -1 : static_cast<int>(client(oldest_).idle_at - now_);
    }

    // Out of descriptors (EMFILE): the connection stays queued. Say so once, and take it
    // when a client leaves (a level-triggered listener would be reported at once: a spin).
    void accept_failed() {
        if (errno == EAGAIN) told_full_ = false;  // the queue is empty: any shortage is over
        if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM) return;
        if (std::exchange(told_full_, true)) return;
        lab::note("accept: " + std::string(std::strerror(errno)) +
                  "; pausing accepts until a client leaves");
    }

    bool modify(int fd, std::uint32_t events) {  // EPOLL_CTL_MOD: what to report for fd
        epoll_event event{.events = events, .data = {.fd = fd}};
        client(fd).events = events;
        return epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, fd, &event) == 0;
    }
    bool edge() const { return opt_.mode == "et"; }
    Client& client(int fd) { return clients_[static_cast<std::size_t>(fd)]; }
    bool full(int fd) {
        const auto& out = client(fd).out;
        return out && out->size() >= static_cast<std::size_t>(opt_.max_buffer);
    }
    std::string_view name(int fd) {  // for the log: with --quiet, none are kept
        return opt_.quiet ? std::string_view{} : names_[static_cast<std::size_t>(fd)];
    }
    static long long now_ms() {
        const auto now = std::chrono::steady_clock::now().time_since_epoch();
        return std::chrono::duration_cast<std::chrono::milliseconds>(now).count();
    }

    lab::Fd listen_fd_, epoll_fd_;
    Options opt_;
    lab::Log log_{opt_.quiet};
    std::vector<Client> clients_;                               // indexed by descriptor number
    std::vector<std::string> names_;                            // the peers' addresses, for the log
    std::vector<char> buffer_ = std::vector<char>(kReadChunk);  // every read() lands here
    std::vector<epoll_event> events_ = std::vector<epoll_event>(kMaxEvents);
    int oldest_ = -1, newest_ = -1;  // the ends of the list by last activity
    long long now_ = now_ms(), idle_ms_ = lab::to_milliseconds(opt_.idle_seconds);
    long long count_ = 0;                            // clients connected
    bool told_full_ = false, retry_accept_ = false;  // out of descriptors
};

void serve_clients(lab::Fd listen_fd, lab::Fd epoll_fd, const Options& opt) {
    Server(std::move(listen_fd), std::move(epoll_fd), opt).run();
}

}  // namespace
