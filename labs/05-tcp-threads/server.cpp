// 05-tcp-threads server: TCP echo, a thread per connection (UNP's threads/tcpserv01.c).
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

constexpr std::uint16_t kDefaultPort = 9905;
constexpr int kBacklog = SOMAXCONN;
constexpr long long kDefaultMaxClients = 64;
constexpr long long kMaxClientsLimit = 4096;
constexpr double kDefaultIdleTimeout = 60;
constexpr std::size_t kBufferSize = 16384;
constexpr std::string_view kBusyReply = "server busy\n";
constexpr std::chrono::milliseconds kPause{100};  // when accept() finds no descriptor left
constexpr const char* kUsage = R"(usage: server [OPTIONS] [PORT]
TCP echo server, one thread per connection.
  -H, --host ADDR             address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N                port to listen on (default 9905; 0 lets the kernel choose)
      --max-clients N         clients served at once (default 64, at most 4096)
      --idle-timeout SECONDS  drop a client that neither sends nor reads for that long (60)
      --quiet                 no log line per event
)";

// A connected client. Its worker thread owns it, and so closes it on every path.
struct Client {
    lab::Fd conn;
    std::string peer;
};

// The connections being served, shared by main and the workers: one mutex guards it all.
class Clients {
    std::mutex mutex_;
    std::condition_variable gone_;
    std::vector<int> live_;

  public:
    bool admit(int fd, long long max) {
        const std::lock_guard<std::mutex> lock(mutex_);
        if (std::ssize(live_) >= max) return false;
        live_.push_back(fd);
        return true;
    }
    // A worker's last call, its Fd still open; the line is logged under the lock (Pitfalls).
    void leave(int fd, const lab::Log& log, const std::string& line) {
        const std::lock_guard<std::mutex> lock(mutex_);
        log(line);
        std::erase(live_, fd);
        gone_.notify_one();
    }
    // Wakes each worker with shutdown() (read() returns 0, write() fails); waits till all left.
    void stop_all() {
        // TASK 05.stop-all
        std::unique_lock<std::mutex> lock(mutex_);
        for (const int fd : live_)
            shutdown(fd, SHUT_RDWR);
        gone_.wait(lock, [this] { return live_.empty(); });
        // END TASK
    }
};
static void start_worker(lab::Fd, const std::string&, Clients&, double, const lab::Log&);
static void refuse(int fd, const std::string& peer, const lab::Log& log);
static void accept_failed(const std::string& where, bool& told);
static void set_idle_timeout(int fd, double seconds);

int main(int argc, char** argv) {
    long long max_clients = kDefaultMaxClients;
    double idle_timeout = kDefaultIdleTimeout;
    bool quiet = false;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-clients", &max_clients, 1, kMaxClientsLimit);
    args.seconds("--idle-timeout", &idle_timeout);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const std::string where = lab::format_address(local);
    const lab::Log log(quiet);
    lab::handle_signals();
    // 1. socket(): the listening socket, which only ever hands out connections.
    const lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    // 2. bind(), SO_REUSEADDR first: a restart is not refused while TIME_WAIT lingers (lab 06).
    const int on = 1;
    if (setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        lab::die("setsockopt SO_REUSEADDR");
    }
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) lab::die("bind", where);
    // 3. listen(): from here the kernel completes handshakes on its own.
    if (listen(listen_fd.get(), kBacklog) == -1) lab::die("listen", where);
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);
    Clients clients;
    bool told = false;  // that we are out of descriptors (accept_failed() says it once)
    while (!lab::stop_requested()) {
        // 4. accept() sleeps until a client comes, or a stop signal interrupts it (EINTR).
        lab::Endpoint peer;
        lab::Fd conn(accept4(listen_fd.get(), peer.addr(), &peer.size, SOCK_CLOEXEC));
        if (!conn) {
            accept_failed(where, told);
        } else if (!clients.admit(conn.get(), max_clients)) {
            refuse(conn.get(), lab::format_address(peer), log);  // then the Fd closes it
        } else {
            // 5. A thread per connection, which alone owns the descriptor from now on.
            start_worker(std::move(conn), lab::format_address(peer), clients, idle_timeout, log);
        }
    }
    // 6. Stop: no more accept(); wake every worker, wait until the last has left.
    log("stopping on ", lab::stop_signal_name());
    clients.stop_all();
    return lab::kExitOk;
}

// A worker thread: lab 03's echo loop for one client, on a thread of its own.
static void serve(Client client, Clients& clients, double idle_timeout, const lab::Log& log) {
    pthread_setname_np(pthread_self(), "worker");  // what ps -L and top -H show
    log("client ", client.peer, " connected: thread ", gettid());
    set_idle_timeout(client.conn.get(), idle_timeout);
    long long total = 0;
    ssize_t n = 0;  // 0 at the end of the stream, else read() or write() failed
    // TASK 05.echo
    std::vector<char> buffer(kBufferSize);
    // 7. read() blocks this thread only. No EINTR: the thread blocks every signal.
    while ((n = read(client.conn.get(), buffer.data(), buffer.size())) > 0) {
        log("from ", client.peer, ": ", n, " bytes");
        // 8. write(): the echo; lab::write_all() finishes short writes.
        if (!lab::write_all(client.conn.get(), buffer.data(), static_cast<std::size_t>(n))) break;
        total += n;
    }
    // END TASK
    std::string how = "left after " + std::to_string(total) + " bytes";
    if (n != 0)
        how = errno == EAGAIN ? "dropped: idle for " + lab::seconds_text(idle_timeout)
                              : std::string("dropped: ") + std::strerror(errno);
    clients.leave(client.conn.get(), log, "client " + client.peer + " " + how);  // then close
}

// Starts a detached thread running serve(): nobody joins it, its stack is freed as it ends. It
// starts with its creator's signal mask: block all for the creation, then restore main's, so
// SIGINT, SIGTERM and SIGALRM reach only main's accept(). No thread to be had: drop the client.
static void start_worker(lab::Fd conn, const std::string& peer, Clients& clients,
                         double idle_timeout, const lab::Log& log) {
    // TASK 05.start-worker
    sigset_t all, main_mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &main_mask);
    const int fd = conn.get();
    try {
        std::thread(serve, Client{std::move(conn), peer}, std::ref(clients), idle_timeout,
                    std::cref(log))
            .detach();
    } catch (const std::system_error& e) {  // the Client went with the thread that never ran
        clients.leave(fd, log, "client " + peer + " dropped: " + e.what());
    }
    pthread_sigmask(SIG_SETMASK, &main_mask, nullptr);
    // END TASK
}

// The fault: one client too many. The answer: a line that says so, then the caller closes.
static void refuse(int fd, const std::string& peer, const lab::Log& log) {
    log("refused ", peer, ": server busy");
    (void)lab::write_all(fd, kBusyReply);  // best effort: the peer may be gone already
}

// The fault: out of descriptors, where accept() fails at once again and again (a spin).
static void accept_failed(const std::string& where, bool& told) {
    if (errno == EINTR || errno == ECONNABORTED) return;  // a signal; a client that gave up
    const bool out = errno == EMFILE || errno == ENFILE;
    if (!out || !std::exchange(told, true)) lab::warn("accept", where);
    if (out) std::this_thread::sleep_for(kPause);  // until a client leaves and frees one
}

// The fault: a client that neither sends nor reads, holding its place for ever.
static void set_idle_timeout(int fd, double seconds) {
    const timeval limit = lab::to_timeval(seconds);  // rounded up: 0 would mean "never"
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);  // read() fails with EAGAIN
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);  // write() too
}
