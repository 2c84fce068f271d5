// 09-epoll server: TCP echo for thousands of clients in one thread, on epoll (--mode lt|et).
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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
#include "labs/09-epoll/idle_list.hpp"

constexpr std::uint16_t kDefaultPort = 9909;
constexpr int kBacklog = SOMAXCONN;
constexpr int kMaxEvents = 1024;                   // events taken per epoll_wait()
constexpr std::size_t kReadChunk = 65536;          // bytes per read(), into one shared buffer
constexpr std::size_t kEtBudget = 4 * kReadChunk;  // ET: bytes per client per turn
constexpr long long kMaxClientsLimit = 1000000, kReservedFds = 8;  // fds never for clients
constexpr long long kDefaultMaxBuffer = 1 << 20, kMaxBufferLimit = 1 << 26;
constexpr double kDefaultIdleTimeout = 60;
constexpr std::string_view kBusyReply = "server busy\n";

constexpr const char* kUsage = R"(usage: server [OPTIONS] [PORT]
TCP echo server: one thread, epoll, thousands of clients at once.
  -H, --host ADDR             address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N                port to listen on (default 9909; 0 lets the kernel choose)
      --mode lt|et            level-triggered (the default) or edge-triggered epoll
      --max-clients N         clients at once; one more is told "server busy" (ulimit -n - 8)
      --max-buffer BYTES      unsent echo per client before reading it stops (1048576)
      --idle-timeout SECONDS  drop a client that neither sends nor reads for that long (60)
      --quiet                 no log line per event
)";

// One connection, in a table indexed by its descriptor number: 32 bytes while idle.
struct Client {
    lab::Fd fd;                        // closing it also takes it out of the interest list
    std::uint32_t events = 0;          // what epoll reports for it (LT changes it)
    std::unique_ptr<std::string> out;  // echo not yet taken by the peer, only while some waits
    std::uint64_t bytes = 0;           // received in all
    bool eof = false;                  // FIN: echo the rest, then close
};

struct Server {
    lab::Fd listen_fd, epoll_fd;
    bool edge = false, quiet = false, out_of_fds = false;  // --mode et, --quiet; EMFILE seen
    long long count = 0, max_clients = 0, max_buffer = kDefaultMaxBuffer;  // clients now, limits
    double idle_timeout = kDefaultIdleTimeout;
    std::vector<Client> clients;     // indexed by descriptor number
    std::vector<std::string> peers;  // by descriptor too: "127.0.0.1:50312", unless --quiet
    std::vector<char> buffer = std::vector<char>(kReadChunk);  // every read() lands here
    double now = lab::now_seconds();                           // the time, on the steady clock
    IdleList idle;                                             // the timers (idle_list.hpp)
    lab::Log log{false};
    void accept_clients();  // the lesson, after main
    void add_client(lab::Fd fd, const lab::Endpoint& address);
    void serve(int fd, std::uint32_t events);
    void close_client(int fd, std::string_view why);
    bool send(int fd, std::string_view bytes);  // the defences
    void watch(int fd);
    bool modify(int fd, std::uint32_t events);
    void out_of_descriptors();
    Client& at(int fd) { return clients[static_cast<std::size_t>(fd)]; }
    std::string_view peer(std::size_t fd) const { return quiet ? "" : std::string_view(peers[fd]); }
    void touch(int fd) { idle.touch(fd, now + idle_timeout); }
};

int main(int argc, char** argv) {
    Server server;
    std::string mode = "lt";
    server.max_clients = std::clamp(sysconf(_SC_OPEN_MAX) - kReservedFds, 1LL, kMaxClientsLimit);
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--mode", &mode);
    args.option("--max-clients", &server.max_clients, 1, kMaxClientsLimit);
    args.option("--max-buffer", &server.max_buffer, 1, kMaxBufferLimit);
    args.seconds("--idle-timeout", &server.idle_timeout);
    args.flag("--quiet", &server.quiet);
    args.parse(argc, argv);
    if (mode != "lt" && mode != "et") args.usage_error("bad mode '" + mode + "' (want lt or et)");
    server.edge = mode == "et";
    server.log = lab::Log(server.quiet);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    lab::handle_signals();
    // 1. socket(): non-blocking, so that no accept4() can ever stall the loop.
    server.listen_fd.reset(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int listen_fd = server.listen_fd.get(), on = 1;
    if (listen_fd == -1) lab::die("socket");
    if (setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1)
        lab::die("setsockopt");
    // 2. bind() and 3. listen().
    if (bind(listen_fd, local.addr(), local.size) == -1)
        lab::die("bind", lab::format_address(local));
    if (listen(listen_fd, kBacklog) == -1) lab::die("listen");
    // 4. epoll_create1(), and the listener into its interest list. Edge-triggered: it is
    //    reported when connections arrive, and accept_clients() takes all that wait.
    // TASK 09.epoll-create
    server.epoll_fd.reset(epoll_create1(EPOLL_CLOEXEC));
    if (!server.epoll_fd) lab::die("epoll_create1");
    epoll_event listener{.events = EPOLLIN | EPOLLET, .data = {.fd = listen_fd}};
    if (epoll_ctl(server.epoll_fd.get(), EPOLL_CTL_ADD, listen_fd, &listener) == -1)
        lab::die("epoll_ctl");
    // END TASK
    lab::print_ready("tcp", lab::local_endpoint(listen_fd).value_or(local));
    server.log("mode ", mode, ", at most ", server.max_clients, " clients");
    std::vector<epoll_event> events(kMaxEvents);
    while (!lab::stop_requested()) {
        // 5. epoll_wait(): three kinds of event. The listener (new connections), the clients
        //    (bytes, room to write, FIN, reset), the timers: it sleeps until the first deadline.
        // TASK 09.wait
        // KIT: const int n = lab::todo<int>("09.wait");
        const int timeout = server.idle.milliseconds_left(server.now);
        const int n = epoll_wait(server.epoll_fd.get(), events.data(), kMaxEvents, timeout);
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the check of the flag
        if (n == -1) lab::die("epoll_wait");
        // END TASK
        server.now = lab::now_seconds();
        bool incoming = false;  // accept after the batch: it may free a number a new one takes
        for (int i = 0; i < n; ++i) {
            const int fd = events[i].data.fd;
            if (fd == listen_fd) incoming = true;
            if (fd != listen_fd && server.at(fd).fd) server.serve(fd, events[i].events);
        }
        for (int fd = server.idle.oldest(); fd != -1 && server.idle.deadline(fd) <= server.now;
             fd = server.idle.oldest())
            server.close_client(fd, "idle for " + lab::seconds_text(server.idle_timeout));
        if (incoming || server.out_of_fds) server.accept_clients();
    }
    server.log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;  // every lab::Fd closes its socket on the way out
}

// 6. accept4() until EAGAIN: one report may stand for many waiting connections. One too
//    many is told "server busy" (a fresh socket has room) and closed.
void Server::accept_clients() {
    while (!lab::stop_requested()) {
        lab::Endpoint peer;
        lab::Fd fd(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!fd && (errno == ECONNABORTED || errno == EPROTO)) continue;  // it gave up: next
        if (!fd) return out_of_descriptors();
        if (count < max_clients)
            add_client(std::move(fd), peer);
        else if (write(fd.get(), kBusyReply.data(), kBusyReply.size()) > 0)
            log("refused ", lab::format_address(peer), ": server busy");
    }
}

// 7. epoll_ctl(ADD): LT watches for input only; ET for everything, once and for good.
void Server::add_client(lab::Fd fd, const lab::Endpoint& address) {
    const int n = fd.get();
    if (static_cast<std::size_t>(n) >= clients.size()) clients.resize(n + 1UL);
    if (!quiet) peers.resize(clients.size());  // the names cost memory only when logged
    // TASK 09.add-client
    const std::uint32_t et = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLOUT | EPOLLET;
    epoll_event event{.events = edge ? et : EPOLLIN, .data = {.fd = n}};
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, n, &event) == -1)
        return lab::warn("epoll_ctl", lab::format_address(address));  // fd closes it
    at(n).events = event.events;
    // END TASK
    at(n).fd = std::move(fd);
    if (!quiet) peers[static_cast<std::size_t>(n)] = lab::format_address(address);
    ++count;
    touch(n);
    log("client ", peer(n), " connected: fd ", n);
}

// ET: is the socket drained after a read() of n of the `asked` bytes? EAGAIN says so, at one
// more read() per wake-up; a short read too (TCP hands over all it holds), unless urgent data
// waits (EPOLLPRI: read() stops at its mark) or the FIN came (EPOLLRDHUP: no new edge comes).
static bool drained(std::uint32_t events, std::size_t n, std::size_t asked) {
    // TASK 09.drained
    // KIT: return lab::todo<bool>("09.drained");
    return n < asked && (events & (EPOLLPRI | EPOLLRDHUP)) == 0;
    // END TASK
}

// 8. read() and echo. LT reads once per report: epoll reports the rest. ET reads until the
//    socket is drained or its budget spent; then EPOLL_CTL_MOD sends it to the back of the
//    ready list. A reset (EPOLLERR, EPOLLHUP, reported unasked) fails the next read().
void Server::serve(int fd, std::uint32_t events) {
    Client& client = at(fd);
    if (!send(fd, {})) return close_client(fd, std::strerror(errno));  // the echo that waits
    for (std::size_t budget = edge ? kEtBudget : kReadChunk; (events & ~EPOLLOUT) != 0;) {
        if (client.eof || (client.out && std::ssize(*client.out) >= max_buffer)) break;
        if (budget == 0 && !modify(fd, client.events)) return close_client(fd, "epoll_ctl");
        if (budget == 0) return;  // ET: at the end of the kernel's ready list, owed a turn
        const std::size_t asked = std::min(budget, kReadChunk);
        const ssize_t n = read(fd, buffer.data(), asked);
        if (n == -1 && errno == EAGAIN) break;  // drained (no EINTR: it never sleeps)
        if (n == -1) return close_client(fd, std::strerror(errno));
        client.eof = n == 0;  // FIN: nothing more will come, but the echo is owed
        if (n == 0) break;
        log("from ", peer(fd), ": ", n, " bytes");
        client.bytes += static_cast<std::uint64_t>(n);
        touch(fd);
        if (!send(fd, {buffer.data(), static_cast<std::size_t>(n)}))
            return close_client(fd, std::strerror(errno));
        budget -= static_cast<std::size_t>(n);
        if (!edge || drained(events, static_cast<std::size_t>(n), asked)) break;
    }
    if (client.eof && !client.out) return close_client(fd, {});
    if (!edge) watch(fd);
}

// 9. close(): resetting the Client closes its descriptor, which also takes it out of the
//    interest list (Pitfalls: not always).
void Server::close_client(int fd, std::string_view why) {
    if (why.empty()) log("client ", peer(fd), " left after ", at(fd).bytes, " bytes");
    if (!why.empty()) log("client ", peer(fd), " dropped: ", why);
    idle.remove(fd);
    at(fd) = Client{};
    --count;
}

// Slow readers: what the socket does not take waits in `out`, which exists only then. At
// --max-buffer serve() stops reading, and the client's TCP window closes until it reads.
bool Server::send(int fd, std::string_view bytes) {
    std::unique_ptr<std::string>& out = at(fd).out;
    if (out) bytes = out->append(bytes);
    const ssize_t n = bytes.empty() ? 0 : write(fd, bytes.data(), bytes.size());
    if (n == -1 && errno != EAGAIN) return false;
    const auto done = static_cast<std::size_t>(std::max<ssize_t>(n, 0));
    if (done > 0 && out) touch(fd);  // the peer reads: it is not idle
    if (!out && done < bytes.size()) out = std::make_unique<std::string>(bytes);
    if (out && out->erase(0, done).empty()) out.reset();
    return true;
}

// LT busy loops: watching EPOLLOUT with nothing to send, or EPOLLIN while serve() will not
// read, would report the socket on every call. Ask for what can be used now, no more.
void Server::watch(int fd) {
    const Client& client = at(fd);
    const bool full = client.out && std::ssize(*client.out) >= max_buffer;
    const std::uint32_t want = (client.out ? EPOLLOUT : 0U) | (client.eof || full ? 0U : EPOLLIN);
    if (want != client.events && !modify(fd, want)) close_client(fd, std::strerror(errno));
}

bool Server::modify(int fd, std::uint32_t events) {  // EPOLL_CTL_MOD: a new interest set
    epoll_event event{.events = events, .data = {.fd = fd}};
    at(fd).events = events;
    return epoll_ctl(epoll_fd.get(), EPOLL_CTL_MOD, fd, &event) == 0;
}

// Out of descriptors (EMFILE): the connection stays queued. A level-triggered listener would
// be reported again at once, a spin; this one is not, and main tries once per turn.
void Server::out_of_descriptors() {
    if (errno == EAGAIN) out_of_fds = false;  // the queue is empty: any shortage is over
    if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM) return;
    if (!std::exchange(out_of_fds, true))
        lab::note("accept: " + std::string(std::strerror(errno)) +
                  "; pausing accepts until a client leaves");
}
