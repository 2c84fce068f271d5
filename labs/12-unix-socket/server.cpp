// 12-unix-socket server: an echo server on a Unix domain socket, stream or datagram.
//
// A Unix socket is named by a file path (or a Linux abstract name), not by an address and
// a port, and its bytes never leave the kernel. That buys what no IP socket has: file
// permissions decide who may connect, the kernel tells the server who its peer is
// (SO_PEERCRED), and open descriptors can travel over it (SCM_RIGHTS).
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/args.hpp"
#include "common/endpoint.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/12-unix-socket/unix_address.hpp"

namespace {

constexpr int kBacklog = 16;                    // connections that may wait while one is served
constexpr std::size_t kBufferSize = 65536;      // one read; also the largest datagram echoed
constexpr std::size_t kMaxFdsPerMessage = 4;    // descriptors taken from one message
constexpr std::size_t kMaxFileBytes = 1 << 20;  // at most this much of a passed file is sent
constexpr mode_t kSocketUmask = 0177;           // the socket file is born rw------- (0600)

constexpr const char* kUsage =
    R"(usage: server [--path PATH | --abstract NAME] [--dgram] [--idle-timeout SECONDS] [--quiet]
Unix domain socket echo server.
      --path PATH       socket file to create (default ./lab12.sock; at most 107 bytes)
      --abstract NAME   Linux abstract name instead of a file (shown as @NAME)
      --dgram           datagram socket: reply to each datagram's sender
      --idle-timeout SECONDS  drop a stream client silent (or not reading) this long (default 10)
      --quiet           no log line per event
      --help            this text
)";

// 2. bind() with the umask narrowed: bind() creates the socket file, and connecting needs
//    write permission on it, so mode 0600 lets only our own user in.
int bind_private(int fd, const lab::Endpoint& local) {
    const mode_t old_mask = umask(kSocketUmask);
    const int rc = bind(fd, local.addr(), local.size);
    const int saved = errno;
    umask(old_mask);
    errno = saved;
    return rc;
}

// bind() said EADDRINUSE. Removes the file only if it is a socket nobody answers on (a
// server that crashed left it); anything else is refused and left exactly as it was.
void remove_if_stale(const std::string& path, int type, const lab::Endpoint& local) {
    struct stat st {};
    if (lstat(path.c_str(), &st) == -1) return;  // gone meanwhile: just bind again
    if (!S_ISSOCK(st.st_mode)) {
        lab::fatal("bind " + std::string(path) + ": Address already in use (not a socket; left alone)");
    }
    // Non-blocking, or a live server with a full listen queue would hold us in connect().
    const lab::Fd probe(socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe) lab::die("socket");
    // Only ECONNREFUSED proves that no socket is bound to the file any more.
    if (connect(probe.get(), local.addr(), local.size) == 0 || errno != ECONNREFUSED) {
        lab::die("bind", path, EADDRINUSE);
    }
    if (unlink(path.c_str()) == -1 && errno != ENOENT) lab::die("unlink", path);
}

// Removes the socket file when the server ends, but only if it is still the one this
// server created (same inode): a file someone put there since is not ours to delete.
class SocketFile {
  public:
    explicit SocketFile(std::string path) : path_(std::move(path)) {
        if (lstat(path_.c_str(), &created_) == -1) path_.clear();
    }
    ~SocketFile() {
        struct stat now {};
        if (path_.empty() || lstat(path_.c_str(), &now) == -1) return;
        if (now.st_dev == created_.st_dev && now.st_ino == created_.st_ino) unlink(path_.c_str());
    }
    SocketFile(const SocketFile&) = delete;
    SocketFile& operator=(const SocketFile&) = delete;

  private:
    std::string path_;
    struct stat created_ {};
};

// SO_PEERCRED: the client's pid, uid and gid as the kernel recorded them at connect().
// The client cannot forge them, so a server can base access decisions on them.
ucred peer_credentials(int fd) {
    ucred cred{};  // all zero if the call fails, which it does not on a connected socket
    socklen_t size = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) == -1) {
        lab::warn("getsockopt SO_PEERCRED");
    }
    return cred;
}

struct Received {
    ssize_t size = -1;           // as recvmsg() returns it
    std::vector<lab::Fd> fds;    // descriptors that came with the bytes (SCM_RIGHTS)
    bool fds_truncated = false;  // more than kMaxFdsPerMessage: the kernel closed the rest
};

// 5. recvmsg() instead of recv(): besides bytes it delivers control messages, here
//    descriptors. Each one is installed in our table, so it goes into an Fd at once.
Received receive(int fd, std::vector<char>& buffer, std::vector<char>& control) {
    // BEGIN SOLUTION: receive with recvmsg() (MSG_CMSG_CLOEXEC) into a msghdr whose iovec is
    //   `buffer` and whose control area is `control`; store its result in got.size, walk
    //   the control messages with CMSG_FIRSTHDR()/CMSG_NXTHDR(), put every descriptor of
    //   each SOL_SOCKET/SCM_RIGHTS one (memcpy() from CMSG_DATA()) into got.fds, and set
    //   got.fds_truncated from MSG_CTRUNC in msg_flags
    // STUB: return lab::todo<Received>("lab 12: recvmsg() with SCM_RIGHTS");
    iovec data{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_iov = &data;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();  // new'd memory: aligned enough for cmsghdr
    msg.msg_controllen = control.size();
    Received got;
    got.size = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (got.size == -1) return got;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int passed = -1;
            std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
            got.fds.emplace_back(passed);
        }
    }
    got.fds_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    return got;
    // END SOLUTION
}

// Sends back the content of a file the client opened and passed to us. pread() from
// offset 0: the descriptor shares its file offset with the client's, so read() would
// move the client's position too. Returns false when the client can no longer be served.
bool send_file(int sock, int file, std::vector<char>& buffer, const lab::Log& log) {
    struct stat st {};
    if (fstat(file, &st) == -1 || !S_ISREG(st.st_mode)) {
        log("refused a passed descriptor: not a regular file");  // a pipe could block forever
        return true;
    }
    std::size_t sent = 0;
    while (sent < kMaxFileBytes) {
        const std::size_t want = std::min(buffer.size(), kMaxFileBytes - sent);
        const ssize_t n = pread(file, buffer.data(), want, static_cast<off_t>(sent));
        if (n == -1 && errno == EINTR) continue;
        if (n == -1) lab::warn("pread", "passed descriptor");
        if (n <= 0) break;
        if (!lab::write_all(sock, buffer.data(), static_cast<std::size_t>(n))) return false;
        sent += static_cast<std::size_t>(n);
    }
    log("sent ", sent, " bytes of a file received as a descriptor");
    return true;
}

// Why a stream client's call failed, said once; EAGAIN means a socket timeout fired.
void log_failure(const char* call, int err, const std::string& who, const lab::Log& log) {
    if (err == EAGAIN || err == EWOULDBLOCK) {
        log("client ", who, " idle too long (", call, "); dropped");
    } else {
        lab::warn(call, who, err);
    }
}

// 6. Echo until the client closes. Its bytes come back unchanged; bytes that carry
//    descriptors are answered with the file's content instead.
void serve_client(int fd, const timeval& idle, const lab::Log& log) {
    const ucred cred = peer_credentials(fd);
    const std::string who = "pid=" + std::to_string(cred.pid);
    log("client ", who, " uid=", cred.uid, " gid=", cred.gid, " connected");
    // Timeouts, so that a client that sends nothing, or never reads its replies, cannot
    // hold the one-at-a-time server forever: the blocked call fails with EAGAIN.
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle);
    std::vector<char> buffer(kBufferSize);
    std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage));
    unsigned long long total = 0;
    while (!lab::stop_requested()) {
        Received got = receive(fd, buffer, control);
        if (got.size == -1 && errno == EINTR) continue;
        if (got.size == -1) {
            log_failure("recvmsg", errno, who, log);
            return;
        }
        if (got.size == 0) {
            log("client ", who, " left after ", total, " bytes");
            return;
        }
        total += static_cast<unsigned long long>(got.size);
        if (got.fds_truncated) log("client ", who, ": too many descriptors; extras closed");
        if (!got.fds.empty()) {
            log("client ", who, ": passed ", got.fds.size(), " descriptor(s)");
            if (!send_file(fd, got.fds.front().get(), buffer, log)) {
                log_failure("write", errno, who, log);
                return;
            }
            continue;  // the Fds close every passed descriptor here, used or not
        }
        log("client ", who, ": ", got.size, " bytes");
        if (!lab::write_all(fd, buffer.data(), static_cast<std::size_t>(got.size))) {
            log_failure("write", errno, who, log);
            return;
        }
    }
}

void serve_stream(int listen_fd, double idle_seconds, const lab::Log& log) {
    timeval idle{};
    idle.tv_sec = static_cast<time_t>(idle_seconds);
    idle.tv_usec =
        static_cast<suseconds_t>(std::lround((idle_seconds - std::floor(idle_seconds)) * 1e6));
    while (!lab::stop_requested()) {
        // 4. accept(): one client at a time, as in the notes; the others wait in the
        //    backlog. The peer's address is usually "(unnamed)": clients rarely bind.
        const lab::Fd client(accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
        if (!client) {
            if (errno != EINTR) lab::warn("accept");
            continue;  // EINTR: a signal; the loop condition looks at the stop flag
        }
        serve_client(client.get(), idle, log);
    }
}

// Datagram mode: every datagram names its sender, and the reply goes to that name.
void serve_dgram(int fd, const lab::Log& log) {
    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        lab::Endpoint peer;
        // MSG_TRUNC: return the datagram's real length, so an oversized one is noticed
        // instead of being silently cut to the buffer's size.
        const ssize_t n =
            recvfrom(fd, buffer.data(), buffer.size(), MSG_TRUNC, peer.addr(), &peer.size);
        if (n == -1) {
            if (errno != EINTR) lab::warn("recvfrom");
            continue;
        }
        // An unbound sender has no address at all: recvfrom() sets peer.size to 0.
        const bool named = peer.size > offsetof(sockaddr_un, sun_path);
        const std::string from = named ? lab::format_address(peer) : "(unnamed)";
        const auto size = static_cast<std::size_t>(n);
        if (size > buffer.size()) {
            log("from ", from, ": ", size, " bytes, over the ", kBufferSize,
                "-byte limit; dropped");
            continue;
        }
        log("from ", from, ": ", size, " bytes");
        if (!named) {
            log("cannot reply to ", from, ": the sender did not bind a name");
            continue;
        }
        // MSG_DONTWAIT: unlike UDP, a Unix datagram sender waits while the receiver's
        // queue is full; one client that never reads must not stall the server.
        if (sendto(fd, buffer.data(), size, MSG_DONTWAIT, peer.addr(), peer.size) == -1) {
            lab::warn("sendto", from);
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    lab12::Where where;
    bool quiet = false;
    double idle_seconds = 10.0;
    lab::Args args(kUsage);
    lab12::add_address_options(args, &where);
    args.seconds("--idle-timeout", &idle_seconds);
    args.flag("--quiet", &quiet);
    args.parse(argc, argv);
    const lab::Endpoint local = lab12::address_from(args, where);
    const std::string local_text = lab::format_address(local);
    const lab::Log log(quiet);

    lab::handle_signals();

    // BEGIN SOLUTION: create the socket with socket() (AF_UNIX, where.type()) and bind it
    //   with bind_private(); if that fails with EADDRINUSE on a path (not where.abstract()),
    //   call remove_if_stale() and bind_private() once more; set in_use when the first bind
    //   failed, and report failures with lab::die("socket"/"bind", ...)
    // STUB: const lab::Fd sock = lab::todo<lab::Fd>("lab 12: socket(AF_UNIX) and bind()");
    // STUB: const bool in_use = false;
    // 1. socket(): AF_UNIX (AF_LOCAL in the notes), a stream or a datagram socket.
    const lab::Fd sock(socket(AF_UNIX, where.type() | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(). The notes unlink() the path first, blindly: that deletes a running
    //    server's socket, or any file at all. Remove it only if it is a stale socket.
    const bool in_use = bind_private(sock.get(), local) == -1;
    if (in_use) {
        if (errno != EADDRINUSE || where.abstract()) lab::die("bind", local_text);
        remove_if_stale(where.path, where.type(), local);
        if (bind_private(sock.get(), local) == -1) lab::die("bind", local_text);
    }
    // END SOLUTION
    // From here on, leave through return, never exit(): SocketFile removes the file.
    std::optional<SocketFile> socket_file;
    if (!where.abstract()) socket_file.emplace(where.path);

    // 3. listen() (stream only): the kernel queues up to kBacklog connections for us.
    if (!where.dgram && listen(sock.get(), kBacklog) == -1) {
        lab::warn("listen", local_text);
        return lab::kExitFailure;
    }
    lab::print_ready(where.dgram ? "unix-dgram" : "unix", local_text);
    if (in_use) log("removed a stale socket file at ", local_text);
    if (where.dgram) {
        serve_dgram(sock.get(), log);
    } else {
        serve_stream(sock.get(), idle_seconds, log);
    }
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}
