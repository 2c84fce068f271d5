// 07-select server: TCP echo for many clients in one thread, on select().
#include <fcntl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9907;
constexpr int kBacklog = SOMAXCONN;
constexpr std::size_t kReadChunk = 16384;  // the most read from one client in one pass
constexpr long long kDefaultMaxClients = FD_SETSIZE, kMaxClientsLimit = 1000000;
constexpr long long kDefaultMaxBuffer = 1 << 20, kMaxBufferLimit = 1LL << 30;
constexpr double kDefaultIdleTimeout = 60;
constexpr std::string_view kBusyReply = "server busy\n";

constexpr const char* kUsage = R"(usage: server [OPTIONS] [PORT]
TCP echo server: one thread, select(), many clients at once.
  -H, --host ADDR             address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N                port to listen on (default 9907; 0 lets the kernel choose)
      --max-clients N         clients served at once; one more is told "server busy" (1024)
      --max-buffer BYTES      unsent echo per client before reading it stops (1048576)
      --idle-timeout SECONDS  drop a client that neither sends nor reads for that long (60)
      --quiet                 no log line per event
)";

struct Client {
    lab::Fd fd;
    std::string peer;         // "127.0.0.1:50312", for the log
    std::string out;          // received, not yet echoed: written when the socket takes it
    bool eof = false;         // the peer has finished sending: echo the rest, then close
    std::uint64_t bytes = 0;  // received in all
    double deadline = 0;      // dropped if still idle then (seconds on the steady clock)
};

struct Server {
    lab::Fd listen_fd;
    lab::Fd spare{open("/dev/null", O_RDONLY | O_CLOEXEC)};  // closed to accept() at EMFILE
    std::vector<Client> clients;
    long long max_clients = kDefaultMaxClients, max_buffer = kDefaultMaxBuffer;
    double idle_timeout = kDefaultIdleTimeout;
    bool out_of_fds = false;  // said so in the log (once)
    lab::Log log{false};
    void accept_clients();  // the lesson, after main
    bool serve(Client& client, const fd_set& readable, const fd_set& writable) const;
    lab::Fd accept_with_spare(lab::Endpoint& peer);  // the defences
    bool idle(const Client& client, double now) const;
};
int main(int argc, char** argv) {
    Server server;
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-clients", &server.max_clients, 1, kMaxClientsLimit);
    args.option("--max-buffer", &server.max_buffer, 1, kMaxBufferLimit);
    args.seconds("--idle-timeout", &server.idle_timeout);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    server.log = lab::Log(quiet);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const std::string where = lab::format_address(local);
    lab::handle_signals();
    // 1. socket(): non-blocking, as a client that select() announces may be gone by accept().
    server.listen_fd.reset(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int listen_fd = server.listen_fd.get();
    const int on = 1;
    if (listen_fd == -1) lab::die("socket");
    if (setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1)
        lab::die("setsockopt");
    // 2. bind() and 3. listen().
    if (bind(listen_fd, local.addr(), local.size) == -1) lab::die("bind", where);
    if (listen(listen_fd, kBacklog) == -1) lab::die("listen", where);
    lab::print_ready("tcp", lab::local_endpoint(listen_fd).value_or(local));
    fd_set readable, writable;
    while (!lab::stop_requested()) {
        // 4. select() overwrites its sets with the answer, so they are filled every pass: a
        //    client is watched for reading while its echo has room (backpressure), for
        //    writing only while output waits. It sleeps until one is ready, or a deadline.
        // TASK 07.select
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        FD_SET(listen_fd, &readable);
        int max_fd = listen_fd;
        double wake = lab::now_seconds() + 86400;  // the earliest deadline (no client: in a day)
        for (const Client& client : server.clients) {
            const int fd = client.fd.get();
            if (!client.eof && std::ssize(client.out) < server.max_buffer) FD_SET(fd, &readable);
            if (!client.out.empty()) FD_SET(fd, &writable);
            max_fd = std::max(max_fd, fd);
            wake = std::min(wake, client.deadline);
        }
        timeval timeout = lab::to_timeval(wake - lab::now_seconds());
        const int ready = select(max_fd + 1, &readable, &writable, nullptr, &timeout);
        if (ready == -1 && errno == EINTR) continue;  // back to the check of the stop flag
        if (ready == -1) lab::die("select");
        // END TASK
        if (FD_ISSET(listen_fd, &readable)) server.accept_clients();  // 5. accept() (below)
        // 6. read() and write() (serve()), last client first: see step 7.
        const double now = lab::now_seconds();  // one clock read per pass, not per client
        for (std::size_t i = server.clients.size(); i-- > 0;) {
            Client& client = server.clients[i];
            if (server.serve(client, readable, writable) && !server.idle(client, now)) continue;
            // 7. close(): the last client (served already) moves over this one; its Fd closes.
            if (i + 1 != server.clients.size()) client = std::move(server.clients.back());
            server.clients.pop_back();
        }
    }
    server.log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;  // every lab::Fd closes its socket on the way out
}

// accept() until EAGAIN: one readable listener may stand for many waiting clients. One too
// many is told "server busy", and so is one whose descriptor does not fit an fd_set.
void Server::accept_clients() {
    // TASK 07.accept
    while (!lab::stop_requested()) {
        if (!spare) spare.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));  // after a refusal
        lab::Endpoint peer;
        lab::Fd fd(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_NONBLOCK | SOCK_CLOEXEC));
        const bool starved = !fd && (errno == EMFILE || errno == ENFILE);
        if (starved) fd = accept_with_spare(peer);
        if (!fd && errno != EAGAIN) lab::warn("accept");
        if (!fd) break;
        if (starved || fd.get() >= FD_SETSIZE || std::ssize(clients) >= max_clients) {
            log("refused ", lab::format_address(peer), ": server busy");
            send(fd.get(), kBusyReply.data(), kBusyReply.size(), MSG_NOSIGNAL);  // it has room
            continue;
        }
        const double deadline = lab::now_seconds() + idle_timeout;  // dropped then, if idle
        clients.push_back({std::move(fd), lab::format_address(peer), {}, false, 0, deadline});
        log("client ", clients.back().peer, " connected");
    }
    if (!spare) spare.reset(open("/dev/null", O_RDONLY | O_CLOEXEC));  // queue empty at EMFILE
    // END TASK
}

// read() one chunk if readable, write() what the socket takes if output waits: neither can
// block. False when the client is finished: it has left, or failed.
bool Server::serve(Client& client, const fd_set& readable, const fd_set& writable) const {
    ssize_t n = 0;  // what the last read() or write() returned
    // TASK 07.echo
    const int fd = client.fd.get();
    const bool can_read = FD_ISSET(fd, &readable), can_write = FD_ISSET(fd, &writable);
    char chunk[kReadChunk];
    if (can_read) {
        n = read(fd, chunk, std::min<long long>(kReadChunk, max_buffer - std::ssize(client.out)));
        if (n > 0) client.out.append(chunk, static_cast<std::size_t>(n));
        if (n > 0) client.bytes += static_cast<std::uint64_t>(n);
        if (n > 0) log("from ", client.peer, ": ", n, " bytes");
        if (n == 0) client.eof = true;  // FIN: nothing more will come, but the echo is owed
    }
    if (n != -1 && (can_read || can_write) && !client.out.empty()) {
        n = write(fd, client.out.data(), client.out.size());
        if (n > 0) client.out.erase(0, static_cast<std::size_t>(n));  // the rest waits for room
    }
    if (n == -1 && errno != EAGAIN && errno != EINTR) {
        log("client ", client.peer, " dropped: ", std::strerror(errno));
        return false;
    }
    // END TASK
    if (n > 0) client.deadline = lab::now_seconds() + idle_timeout;  // it sent or took bytes
    if (client.out.empty() && n <= 0) client.out.shrink_to_fit();    // quiet: no buffer held
    if (!client.eof || !client.out.empty()) return true;
    log("client ", client.peer, " left after ", client.bytes, " bytes");
    return false;
}

// Out of descriptors: accept() fails with EMFILE but the client stays queued, so the
// listener stays readable and the loop would spin. muduo's answer: close a spare descriptor
// to accept the client, who is then turned away; the spare is taken back before the next.
lab::Fd Server::accept_with_spare(lab::Endpoint& peer) {
    if (!std::exchange(out_of_fds, true)) log("out of descriptors: refusing new connections");
    spare.reset();
    return lab::Fd(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_CLOEXEC));
}

// Silent clients would hold their slots for ever. Each has a deadline; select() sleeps no
// later than the earliest (found as the sets are filled); one past it is dropped here.
bool Server::idle(const Client& client, double now) const {
    if (now < client.deadline) return false;
    log("client ", client.peer, " dropped: idle for ", lab::seconds_text(idle_timeout));
    return true;
}
