// 05-tcp-threads server: a TCP echo server that serves each connection on its own thread.
//
// The main thread only accepts. Each accepted descriptor is moved into a new thread, which
// echoes until its client leaves and then removes itself from the set of live connections.
// That set (under a mutex) is what lets the server refuse a client over --max-clients and,
// on SIGTERM, wake every thread blocked in read() with shutdown() and join it.
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {

constexpr std::uint16_t kDefaultPort = 9905;
constexpr long long kDefaultMaxClients = 64;
constexpr long long kMostClients = 4096;    // upper bound for --max-clients
constexpr int kBacklog = 128;               // connections the kernel queues before accept()
constexpr std::size_t kBufferSize = 16384;  // one read() per loop turn, any size works
constexpr std::string_view kBusyReply = "server busy\n";
constexpr std::chrono::milliseconds kBusyPause{100};  // after accept() fails with EMFILE

constexpr const char* kUsage = R"(usage: server [--host ADDR] [--port N] [--max-clients N] [--quiet]
       server [PORT]
TCP echo server, one thread per connection.
  -H, --host ADDR       address to listen on (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N          port to listen on (default 9905; 0 lets the kernel choose)
      --max-clients N   connections served at once (default 64, at most 4096); one more
                        gets "server busy" and is closed
      --quiet           no log line per event
      --help            this text
)";

// The connections being served. Main adds one per accept and, on SIGTERM, shuts them all
// down; each worker removes its own as it ends. One mutex guards all of it.
class Connections {
  public:
    explicit Connections(std::size_t max) : max_(max) {}

    // Takes a place for fd, or returns false when max connections are already served.
    bool add(int fd) {
        const std::lock_guard<std::mutex> guard(mutex_);
        if (live_.size() >= max_) return false;
        live_.push_back(fd);
        return true;
    }
    void remove(int fd) {
        const std::lock_guard<std::mutex> guard(mutex_);
        std::erase(live_, fd);
    }
    // A worker's last call, made while its Fd is still open: main never shuts down a
    // number that was closed (and maybe reused by a new accept) behind its back.
    void finish(int fd) {
        const std::lock_guard<std::mutex> guard(mutex_);
        std::erase(live_, fd);
        ended_.push_back(std::this_thread::get_id());
    }
    // The workers that have finished since the last call, for main to join.
    std::vector<std::thread::id> take_ended() {
        const std::lock_guard<std::mutex> guard(mutex_);
        return std::exchange(ended_, {});
    }
    // SHUT_RDWR wakes a thread blocked in read() (it returns 0) or write() (EPIPE).
    void shutdown_all() {
        const std::lock_guard<std::mutex> guard(mutex_);
        for (const int fd : live_)
            shutdown(fd, SHUT_RDWR);
    }
    std::size_t count() {
        const std::lock_guard<std::mutex> guard(mutex_);
        return live_.size();
    }

  private:
    std::mutex mutex_;
    std::vector<int> live_;
    std::vector<std::thread::id> ended_;
    const std::size_t max_;
};

// A worker thread: echoes one client until it leaves. The thread owns `conn`, so the
// descriptor is closed when the thread returns, on every path. (std::thread keeps its
// own copy of every argument, so `peer` stays valid for as long as the thread runs.)
void serve(lab::Fd conn, const std::string& peer, Connections& connections, const lab::Log& log) {
    // A name that `ps -L`, `top -H` and /proc/PID/task/*/comm show (at most 15 bytes).
    pthread_setname_np(pthread_self(), "worker");
    std::vector<char> buffer(kBufferSize);
    for (;;) {
        // 6. read(): blocks this thread only; the others go on serving their clients.
        const ssize_t n = read(conn.get(), buffer.data(), buffer.size());
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) {
            lab::warn("read", peer);  // a reset: drop this client only
            break;
        }
        if (n == 0) break;  // end of stream: the client closed (or SIGTERM shut us down)
        log("from ", peer, ": ", n, " bytes");
        // 7. write(): the echo; write_all finishes short writes.
        if (!lab::write_all(conn.get(), buffer.data(), static_cast<std::size_t>(n))) {
            lab::warn("write", peer);
            break;
        }
    }
    connections.finish(conn.get());
    log(peer, " left");
}

// Waits until a client is waiting to be accepted or a stop signal has come. The stop
// signals are blocked in every thread, except inside ppoll(), which lets them in and
// waits as one atomic step: a signal that came while main was busy stays pending and
// ends this wait at once, instead of slipping in just before a blocking accept().
bool wait_for_client(int listen_fd, const sigset_t& wait_mask) {
    pollfd ready{listen_fd, POLLIN, 0};
    while (!lab::stop_requested()) {
        if (ppoll(&ready, 1, nullptr, &wait_mask) > 0) return true;
        if (errno != EINTR) lab::die("ppoll");
    }
    return false;
}

// Joins the workers that have finished, so their stacks do not pile up.
void join_ended(Connections& connections, std::map<std::thread::id, std::thread>& workers) {
    for (const std::thread::id id : connections.take_ended()) {
        workers.extract(id).mapped().join();
    }
}

void refuse(const lab::Fd& conn, const std::string& peer, const lab::Log& log) {
    log(peer, " refused: server busy");
    if (!lab::write_all(conn.get(), kBusyReply)) lab::warn("write", peer);
}

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    long long max_clients = kDefaultMaxClients;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-clients", &max_clients, 1, kMostClients);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const lab::Log log(quiet);

    lab::handle_signals();
    // Block SIGINT and SIGTERM before any thread exists: every worker inherits the mask,
    // so a stop signal is never delivered to a worker, only to main inside ppoll().
    // BEGIN SOLUTION: block SIGINT and SIGTERM with lab::block_stop_signals() before any
    //   thread starts (it calls pthread_sigmask(SIG_BLOCK, ...)), and keep the mask it
    //   returns in `wait_mask`: ppoll() in wait_for_client() lets exactly the stop signals in
    // STUB: const sigset_t wait_mask =
    // STUB:     lab::todo<sigset_t>("lab 05: block the stop signals before any thread starts");
    sigset_t blocked;  // threads started from here on inherit this mask: main takes the signals
    sigemptyset(&blocked);
    for (const int signo : {SIGINT, SIGTERM, SIGALRM}) sigaddset(&blocked, signo);
    sigset_t wait_mask;
    pthread_sigmask(SIG_BLOCK, &blocked, &wait_mask);
    // END SOLUTION

    // 1. socket(): the listening socket, which only ever hands out connections.
    const lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    // 2. bind(): SO_REUSEADDR first, so a restart is not refused while old connections
    //    linger in TIME_WAIT (lab 06 shows this).
    const int on = 1;
    setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    // 3. listen(): from here the kernel completes handshakes on its own.
    if (listen(listen_fd.get(), kBacklog) == -1) {
        lab::die("listen", lab::format_address(local));
    }
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);

    Connections connections(static_cast<std::size_t>(max_clients));
    std::map<std::thread::id, std::thread> workers;  // touched by main only
    while (wait_for_client(listen_fd.get(), wait_mask)) {
        join_ended(connections, workers);
        // 4. accept(): ppoll() said a connection is queued.
        lab::Endpoint peer_address;
        lab::Fd conn(
            accept4(listen_fd.get(), peer_address.addr(), &peer_address.size, SOCK_CLOEXEC));
        if (!conn) {
            // ECONNABORTED: the client gave up while queued. EMFILE: out of descriptors;
            // pause, or ppoll() would report the same queued client again at once.
            const int err = errno;
            lab::warn("accept", lab::format_address(*bound), err);
            if (err == EMFILE || err == ENFILE) std::this_thread::sleep_for(kBusyPause);
            continue;
        }
        const std::string peer = lab::format_address(peer_address);
        const int fd = conn.get();
        if (!connections.add(fd)) {
            refuse(conn, peer, log);
            continue;  // the Fd closes the connection
        }
        log(peer, " connected (", connections.count(), " clients)");
        // 5. One thread per connection. The Fd is moved into it: from now on the thread
        //    alone owns the descriptor, and no shared fixed-size table is needed.
        // BEGIN SOLUTION: hand the connection to a new std::thread running serve(), passing
        //   std::move(conn), peer, std::ref(connections) and std::cref(log); keep it in
        //   `workers` under its get_id(); if that throws std::system_error,
        //   connections.remove(fd) and lab::report_message("thread for", peer, e.what())
        try {
            std::thread worker(serve, std::move(conn), peer, std::ref(connections), std::cref(log));
            const std::thread::id id = worker.get_id();
            workers.emplace(id, std::move(worker));
        } catch (const std::system_error& e) {
            // Out of threads or memory: the Fd inside the failed thread closed the socket.
            connections.remove(fd);
            lab::note("thread for " + peer + ": " + e.what());
        }
        // END SOLUTION
    }

    // 8. Stop: no more accepts; wake every worker, then wait for each to finish.
    log("stopping on ", lab::stop_signal_name(), ": closing ", connections.count(),
        " connections");
    // BEGIN SOLUTION: wake every worker with connections.shutdown_all() (SHUT_RDWR on each
    //   live connection), then join() every thread in `workers`
    connections.shutdown_all();
    for (auto& [id, worker] : workers)
        worker.join();
    // END SOLUTION
    return lab::kExitOk;
}
