// 04-tcp-fork server: lab 03's echo with one child process per connection, so a slow client
// no longer makes the others wait. The parent accepts and forks; each child echoes its
// client and exits, and stays a zombie until the parent reaps it with waitpid().
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"

namespace {
constexpr std::uint16_t kDefaultPort = 9904;
constexpr int kBacklog = SOMAXCONN;         // the kernel caps it at net.core.somaxconn
constexpr std::size_t kBufferSize = 16384;  // bytes per read() in a child
constexpr long long kDefaultMaxChildren = 64;
constexpr long long kMaxChildrenLimit = 4096;
constexpr double kDefaultIdleSeconds = 60;
constexpr const char* kUsage =
    R"(usage: server [--host ADDR] [--port N] [--max-children N] [--idle-timeout SECONDS] [--quiet]
       server [PORT]
TCP echo server, one child process per connection.
  -H, --host ADDR            address to bind (default 127.0.0.1; :: or 0.0.0.0 for all)
  -p, --port N               port to bind (default 9904; 0 lets the kernel choose)
      --max-children N       at most N clients at once, the others queue (default 64)
      --idle-timeout SECONDS drop a client idle for this long (default 60)
      --quiet                no log line per event
      --help                 this text
)";

// SIGCHLD's handler: empty, so safe (signal-safety(7)); it makes a child's exit interrupt
// ppoll(), which the default action, discarding SIGCHLD, would not.
extern "C" void on_child_exit(int /*signo*/) {}

int serve_client(int conn, const std::string& peer, double idle_seconds, const lab::Log& log);
void reap_children(std::vector<pid_t>* children, const lab::Log& log);
void after_accept_failure(const sigset_t& while_waiting);
}  // namespace

int main(int argc, char** argv) {
    bool quiet = false;
    long long max_children = kDefaultMaxChildren;
    double idle_seconds = kDefaultIdleSeconds;
    lab::Args args(kUsage);
    args.host_port("127.0.0.1", kDefaultPort, lab::Positionals::kPort);
    args.option("--max-children", &max_children, 1, kMaxChildrenLimit);
    args.seconds("--idle-timeout", &idle_seconds);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = args.endpoint(SOCK_STREAM);  // getaddrinfo(), as lab 03 shows
    const std::string where = lab::format_address(local);
    const lab::Log log(quiet);
    lab::handle_signals();  // SIGINT, SIGTERM: interrupt the blocking call, set the flag

    // 1. socket() and SO_REUSEADDR, as in lab 03; non-blocking: accept() after ppoll() must
    //    not hang should the connection vanish in between.
    lab::Fd listen_fd(socket(local.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!listen_fd) lab::die("socket");
    const int on = 1;
    if (setsockopt(listen_fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1)
        lab::die("setsockopt", where);
    // 2. bind() and listen(), as in lab 03.
    if (bind(listen_fd.get(), local.addr(), local.size) == -1) lab::die("bind", where);
    if (listen(listen_fd.get(), kBacklog) == -1) lab::die("listen", where);
    const auto bound = lab::local_endpoint(listen_fd.get());
    if (!bound) lab::die("getsockname");
    lab::print_ready("tcp", *bound);

    // 3. SIGCHLD: a handler, and blocked but inside ppoll(): a child that ends while we are
    //    busy leaves SIGCHLD pending, and the next ppoll() returns at once, not sleeping.
    sigset_t while_waiting;  // the signal mask inside ppoll(): SIGCHLD let in
    // TASK 04.sigchld
    struct sigaction action {};
    action.sa_handler = on_child_exit;
    sigaction(SIGCHLD, &action, nullptr);
    sigset_t sigchld;
    sigemptyset(&sigchld);
    sigaddset(&sigchld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &sigchld, &while_waiting);
    // END TASK
    std::vector<pid_t> children;
    bool was_full = false;
    while (!lab::stop_requested()) {
        // 4. waitpid(): collect every child that has ended, without blocking (below).
        reap_children(&children, log);

        // 5. ppoll(): wait for a client, or for a signal (a child's end, a stop: EINTR). At
        //    --max-children the listening socket is left out (fd -1): new clients queue.
        const bool full = children.size() >= static_cast<std::size_t>(max_children);
        if (full && !was_full) log("--max-children ", max_children, " reached: new clients wait");
        was_full = full;
        pollfd waiting{full ? -1 : listen_fd.get(), POLLIN, 0};
        if (ppoll(&waiting, 1, nullptr, &while_waiting) == -1) continue;

        // 6. accept(). EAGAIN: the client left before we got to it.
        lab::Endpoint peer_address;
        const int conn =
            accept4(listen_fd.get(), peer_address.addr(), &peer_address.size, SOCK_CLOEXEC);
        if (conn == -1) {
            after_accept_failure(while_waiting);
            continue;
        }
        const std::string peer = lab::format_address(peer_address);

        // 7. fork(): the child gets a copy of every descriptor and closes the one it does not
        //    use; it leaves with _exit(), never returning through main's destructors.
        // TASK 04.fork
        const pid_t pid = fork();
        if (pid == 0) {
            listen_fd.reset();  // child closes listening socket
            _exit(serve_client(conn, peer, idle_seconds, log));
        }
        if (pid == -1) lab::warn("fork", peer);  // the client sees its connection close
        if (pid > 0) children.push_back(pid);
        if (pid > 0) log("client ", peer, " connected: child ", pid);
        // END TASK

        // 8. close(conn): without it the parent leaks a descriptor per client, and a client
        //    never reads the end of the stream when its child exits (our copy holds it).
        // TASK 04.close
        close(conn);  // parent closes connected socket
        // END TASK
    }

    // The stop: no new clients; SIGTERM to each child; reap them as they end (waitid() waits
    // for one, WNOWAIT leaves the reaping to reap_children(); EINTR: common/'s 50 ms alarm).
    listen_fd.reset();
    for (const pid_t pid : children)
        kill(pid, SIGTERM);
    siginfo_t info;
    while (!children.empty() && (waitid(P_ALL, 0, &info, WEXITED | WNOWAIT) == 0 || errno == EINTR))
        reap_children(&children, log);
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {
// The child of step 7: lab 03's echo, whose loop a stop signal ends (the parent's SIGTERM,
// or ^C; one that came before fork() set the flag, copied). Exit status 0 unless dropped.
int serve_client(int conn, const std::string& peer, double idle_seconds, const lab::Log& log) {
    const lab::Fd owned(conn);  // closed as the child returns, before its _exit()
    lab::handle_signals();      // again: fork() copies handlers, not the 50 ms timer
    // Answers a client that stalls: read() or write() fails (EAGAIN) after --idle-timeout.
    const timeval limit = lab::to_timeval(idle_seconds);  // rounded up: 0 means "never"
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    std::vector<char> buffer(kBufferSize);
    unsigned long long total = 0;
    ssize_t n = 0;
    while (!lab::stop_requested() && (n = read(conn, buffer.data(), buffer.size())) != 0) {
        if (n == -1 && errno == EINTR) continue;  // a signal: back to the flag
        if (n == -1) break;
        log("from ", peer, ": ", n, " bytes");
        if (!lab::write_all(conn, buffer.data(), static_cast<std::size_t>(n))) break;
        total += static_cast<unsigned long long>(n);
    }
    if (lab::stop_requested()) return lab::kExitOk;  // the parent says why it stops
    if (n == 0) log("client ", peer, " left after ", total, " bytes");
    if (n == 0) return lab::kExitOk;
    log("client ", peer, " dropped: ",
        errno == EAGAIN ? "idle for " + lab::seconds_text(idle_seconds) : std::strerror(errno));
    return lab::kExitFailure;
}

// Step 4: waitpid(-1, ..., WNOHANG) until no ended child is left. One SIGCHLD may stand for
// several exits (signals do not queue); WNOHANG returns 0 when the rest are still running.
void reap_children(std::vector<pid_t>* children, const lab::Log& log) {
    // TASK 04.reap
    int status = 0;
    pid_t pid = 0;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        std::erase(*children, pid);
        if (WIFEXITED(status)) log("child ", pid, " exited with status ", WEXITSTATUS(status));
        if (WIFSIGNALED(status))
            log("child ", pid, " killed by SIG", sigabbrev_np(WTERMSIG(status)));
    }
    // END TASK
}

// Answers running out of descriptors (EMFILE): the connection stays queued, ppoll() says
// "readable" at once, and the loop would spin. Rest a second (a signal cuts it short).
void after_accept_failure(const sigset_t& while_waiting) {
    const int err = errno;
    if (err == EAGAIN || err == EINTR) return;
    lab::warn("accept", "", err);  // ECONNABORTED: that client gave up while queued
    const timespec second{1, 0};
    if (err == EMFILE || err == ENFILE) ppoll(nullptr, 0, &second, &while_waiting);
}

}  // namespace
