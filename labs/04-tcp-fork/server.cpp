// 04-tcp-fork server: the echo of lab 03, with one child process per connection, so a
// slow client no longer makes the others wait.
//
// The parent only accepts and forks; each child only echoes. Every exited child stays a
// zombie until its parent collects its status with waitpid(), so the parent must reap.
// It does so in ordinary code, not in the SIGCHLD handler: there it can log each exit,
// count the children it still has, and know exactly whom to stop at the end.
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
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

constexpr std::uint16_t kDefaultPort = 9904;
// Connections the kernel queues while the parent is not accepting (at --max-children).
constexpr int kBacklog = 128;
constexpr std::size_t kBufferSize = 16384;  // bytes per read() in a child
constexpr long long kDefaultMaxChildren = 64;
constexpr long long kMaxChildrenCeiling = 4096;
constexpr double kDefaultIdleSeconds = 60;

constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--max-children N] [--idle-timeout SECONDS] [--quiet]
       server [PORT]
TCP echo server, one child process per connection.
  -H, --host ADDR            address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N               port to bind (default 9904; 0 lets the kernel choose)
      --max-children N       at most N connections at once; more wait in the listen
                             backlog until a child exits (default 64, 1..4096)
      --idle-timeout SECONDS drop a client that sends nothing, or reads nothing, for
                             this long (default 60; 0 waits forever)
      --quiet                no log line per event
      --help                 this text
)";

struct Options {
    std::size_t max_children = kDefaultMaxChildren;
    double idle_seconds = kDefaultIdleSeconds;
};

// The SIGCHLD handler does nothing at all, so it is trivially async-signal-safe. Its only
// job is to exist: a caught signal interrupts ppoll() with EINTR, which wakes the parent
// to reap. (With the default disposition SIGCHLD is discarded and wakes nobody.)
extern "C" void on_child_exit(int /*signo*/) {}

void set_disposition(int signo, void (*handler)(int)) {
    struct sigaction action {};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    sigaction(signo, &action, nullptr);
}

// ---------------------------------------------------------------- the child: echo one client

bool set_idle_timeout(int fd, double seconds) {
    timeval limit{};
    limit.tv_sec = static_cast<time_t>(seconds);
    limit.tv_usec = static_cast<suseconds_t>(std::lround((seconds - std::floor(seconds)) * 1e6));
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit) == 0 &&
           setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit) == 0;
}

// Echoes until the client closes; returns the child's exit status (0: the client closed).
int echo(int fd, const std::string& peer, const lab::Log& log) {
    std::vector<char> buffer(kBufferSize);
    unsigned long long total = 0;
    for (;;) {
        const ssize_t n = read(fd, buffer.data(), buffer.size());
        if (n == -1 && errno == EINTR) continue;
        const bool idle = n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
        if (n == -1 && !idle) lab::warn("read", peer);  // ECONNRESET, say
        if (n <= 0) {
            log("client ", peer, idle ? " idle too long" : " left", " after ", total, " bytes");
            return n == 0 ? lab::kExitOk : lab::kExitFailure;
        }
        log("from ", peer, ": ", n, " bytes");
        if (!lab::write_all(fd, buffer.data(), static_cast<std::size_t>(n))) {
            lab::warn("write", peer);  // EAGAIN: it stopped reading its echo
            return lab::kExitFailure;
        }
        total += static_cast<unsigned long long>(n);
    }
}

// 5b. In the child. It inherited the parent's blocked signals and handlers: it goes back
//     to the defaults, so SIGTERM from the parent (or ^C in the terminal) simply ends it.
int run_child(const lab::Fd& conn, const std::string& peer, const Options& options,
              const sigset_t& original_mask, const lab::Log& log) {
    // BEGIN SOLUTION: give the child back the default signal handling; set_disposition() to
    //   SIG_DFL for SIGTERM, SIGINT and SIGCHLD, then let the signals in again with
    //   sigprocmask(SIG_SETMASK, &original_mask, nullptr)
    set_disposition(SIGTERM, SIG_DFL);
    set_disposition(SIGINT, SIG_DFL);
    set_disposition(SIGCHLD, SIG_DFL);
    sigprocmask(SIG_SETMASK, &original_mask, nullptr);
    // END SOLUTION
    if (options.idle_seconds > 0 && !set_idle_timeout(conn.get(), options.idle_seconds)) {
        lab::warn("setsockopt", peer);
    }
    return echo(conn.get(), peer, log);
}

// ---------------------------------------------------------------- the parent

void log_exit(pid_t pid, int status, const lab::Log& log) {
    if (WIFEXITED(status)) log("child ", pid, " exited with status ", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) log("child ", pid, " killed by signal ", WTERMSIG(status));
}

// 7. waitpid(-1, ..., WNOHANG) in a loop: one SIGCHLD may stand for several exits (signals
//    do not queue), so collect every child that has ended, then stop without blocking.
void reap_children(std::vector<pid_t>* children, const lab::Log& log) {
    // BEGIN SOLUTION: reap every ended child with waitpid() in a loop (pid -1, WNOHANG) until
    //   it returns 0 or -1; erase each reaped pid from *children and log it with log_exit()
    int status = 0;
    pid_t pid = 0;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        std::erase(*children, pid);
        log_exit(pid, status, log);
    }
    // END SOLUTION
}

// At shutdown: SIGTERM to every child still running, then wait for each one.
void stop_children(const std::vector<pid_t>& children, const lab::Log& log) {
    for (const pid_t pid : children) {
        kill(pid, SIGTERM);
    }
    for (const pid_t pid : children) {
        int status = 0;
        if (waitpid(pid, &status, 0) == pid) log_exit(pid, status, log);
    }
}

lab::Fd open_listener(const lab::Endpoint& local) {
    // 1. socket(). Non-blocking, so that an accept() after ppoll() can never hang on a
    //    connection that vanished in between; accepted sockets are still blocking.
    lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    // 2. bind() and 3. listen(), as in lab 03.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) {
        lab::die("bind", lab::format_address(local));
    }
    if (listen(listen_fd.get(), kBacklog) == -1) {
        lab::die("listen", lab::format_address(local));
    }
    return listen_fd;
}

}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    long long max_children = kDefaultMaxChildren;
    Options options;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-children", &max_children, 1, kMaxChildrenCeiling);
    args.seconds("--idle-timeout", &options.idle_seconds);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    options.max_children = static_cast<std::size_t>(max_children);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);
    const lab::Log log(quiet);

    lab::handle_signals();
    // The three signals that matter stay blocked except inside ppoll(), which lets them in
    // atomically while it waits. One that arrives while we are busy waits for ppoll(),
    // which then returns at once: no SIGCHLD or SIGTERM is ever missed.
    // BEGIN SOLUTION: install on_child_exit() for SIGCHLD with set_disposition(), then block
    //   SIGCHLD, SIGINT and SIGTERM with sigprocmask(SIG_BLOCK, &watched, &original_mask) (a
    //   sigset_t built with sigemptyset() and sigaddset()), keeping the previous mask in
    //   `original_mask` for ppoll() and the children
    // STUB: const sigset_t original_mask =
    // STUB:     lab::todo<sigset_t>("lab 04: a SIGCHLD handler, then sigprocmask()");
    set_disposition(SIGCHLD, on_child_exit);
    sigset_t watched;
    sigset_t original_mask;
    sigemptyset(&watched);
    for (const int signo : {SIGCHLD, SIGINT, SIGTERM}) {
        sigaddset(&watched, signo);
    }
    sigprocmask(SIG_BLOCK, &watched, &original_mask);
    // END SOLUTION

    lab::Fd listen_fd = open_listener(local);
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    const std::string where = lab::format_address(*bound);
    lab::print_ready("tcp", *bound);

    std::vector<pid_t> children;
    bool was_full = false;
    while (!lab::stop_requested()) {
        reap_children(&children, log);
        // At the limit, leave the listening socket out of the wait: new clients queue in
        // the backlog until a child exits and its SIGCHLD wakes us.
        const bool full = children.size() >= options.max_children;
        if (full && !was_full) log(children.size(), " children: not accepting until one exits");
        was_full = full;
        pollfd waiting{full ? -1 : listen_fd.get(), POLLIN, 0};
        if (ppoll(&waiting, 1, nullptr, &original_mask) == -1) {
            if (errno != EINTR) lab::die("ppoll", where);
            continue;  // a signal: reap, or see the stop flag
        }

        // 4. accept(). EAGAIN: the client left before we got to it. EINTR cannot happen
        //    here (signals are blocked), but would only mean "go round again".
        lab::Endpoint peer_address;
        const lab::Fd conn(
            accept4(listen_fd.get(), peer_address.addr(), &peer_address.size, SOCK_CLOEXEC));
        if (!conn) {
            if (errno != EAGAIN && errno != EINTR) lab::warn("accept", where);
            continue;
        }
        const std::string peer = lab::format_address(peer_address);

        // 5. fork(): the child gets a copy of every descriptor, listen_fd and conn alike.
        // BEGIN SOLUTION: fork() one child per connection; in the child (pid 0) close
        //   listen_fd with listen_fd.reset() and return run_child(conn, peer, options,
        //   original_mask, log) from main; on -1 lab::warn("fork", peer) and
        //   continue; in the parent children.push_back(pid) and
        //   log("client ", peer, " connected: child ", pid)
        const pid_t pid = fork();
        if (pid == 0) {
            listen_fd.reset();  // 5a. the child never accepts: it closes the listening socket
            return run_child(conn, peer, options, original_mask, log);
        }
        if (pid == -1) {
            lab::warn("fork", peer);  // the client sees its connection close
            continue;
        }
        children.push_back(pid);
        log("client ", peer, " connected: child ", pid);
        // END SOLUTION
        // 6. The parent closes its copy of conn as this iteration ends (conn's Fd); the
        //    child's copy keeps the connection open. Forget this and every connection
        //    leaks a descriptor here, and the client never sees end of stream.
    }

    log("stopping on ", lab::stop_signal_name(), ", ending ", children.size(), " children");
    listen_fd.reset();  // stop accepting first: new clients get "Connection refused"
    stop_children(children, log);
    return lab::kExitOk;
}
