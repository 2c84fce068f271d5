// 12-unix-socket server: an echo server on a Unix domain socket, stream or datagram, named
// by a path (or an abstract name). File permissions say who may connect, the kernel says
// who the peer is (SO_PEERCRED), and open descriptors travel over it (SCM_RIGHTS).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "common/io.hpp"
#include "common/signals.hpp"
#include "labs/12-unix-socket/unix_address.hpp"

namespace {

constexpr int kBacklog = SOMAXCONN;             // the kernel caps it at net.core.somaxconn
constexpr double kDefaultIdleSeconds = 60;      // --idle-timeout
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
      --idle-timeout SECONDS  drop a stream client idle this long (default 60)
      --quiet           no log line per event
      --help            this text
)";

struct Received {
    ssize_t size = -1;         // as recvmsg() returns it
    std::vector<lab::Fd> fds;  // descriptors that came with the bytes (SCM_RIGHTS)
    bool truncated = false;    // MSG_CTRUNC: more came than fitted; the kernel closed them
};
void serve_client(int conn, double idle_seconds, const lab::Log& log);
Received receive(int conn, std::vector<char>& buffer);
bool send_file(int conn, int file, const std::string& who, const lab::Log& log);
void serve_datagrams(int sock, const lab::Log& log);
lab::Fd lock_directory(const std::string& path);
bool remove_stale(const std::string& path, int type, const lab::Endpoint& address);
void set_idle_timeout(int conn, double idle_seconds);

}  // namespace

int main(int argc, char** argv) {
    lab12::Where where;
    double idle_seconds = kDefaultIdleSeconds;
    bool quiet = false;
    lab::Args args(kUsage);
    args.seconds("--idle-timeout", &idle_seconds);
    args.flag("--quiet", &quiet);
    where.parse(args, argc, argv);
    const std::string name = lab::format_address(where.address);
    const lab::Log log(quiet);
    lab::handle_signals();

    // 1. socket(): AF_UNIX (AF_LOCAL in the notes), a stream or a datagram socket.
    const lab::Fd sock(socket(AF_UNIX, where.type() | SOCK_CLOEXEC, 0));
    if (!sock) lab::die("socket");

    // 2. bind(): a path becomes a socket file, of mode 0777 & ~umask: 0600, only our user
    //    may connect. The notes unlink() the path first, blindly; see remove_stale().
    lab::Fd dir_lock = where.abstract ? lab::Fd() : lock_directory(where.path);
    const bool stale = !where.abstract && remove_stale(where.path, where.type(), where.address);
    umask(kSocketUmask);
    if (bind(sock.get(), where.address.addr(), where.address.size) == -1) lab::die("bind", name);
    struct stat created {};
    if (!where.abstract) lstat(where.path.c_str(), &created);

    // 3. listen() (stream only): the kernel queues up to kBacklog connections for us.
    if (!where.dgram && listen(sock.get(), kBacklog) == -1) lab::die("listen", name);
    dir_lock.reset();  // the name answers now: a server starting next finds it live
    lab::print_ready(where.dgram ? "unix-dgram" : "unix", name);
    if (stale) log("removed a stale socket file at ", name);

    while (!where.dgram && !lab::stop_requested()) {
        // 4. accept(): one client at a time, as in the notes; the others wait in the backlog.
        const lab::Fd conn(accept4(sock.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (conn) {
            serve_client(conn.get(), idle_seconds, log);
        } else if (errno != EINTR) {  // EINTR: a signal; the loop looks at the stop flag
            lab::warn("accept");      // out of descriptors, say: pause rather than spin,
            sleep(1);                 // until a signal cuts it short
        }
    }
    if (where.dgram) serve_datagrams(sock.get(), log);

    // close() leaves the socket file behind: unlink() it if it is still the one bind()
    // made, and before sock closes, so that a server starting meanwhile finds us live.
    struct stat now {};
    if (!where.abstract && lstat(where.path.c_str(), &now) == 0 && now.st_ino == created.st_ino) {
        unlink(where.path.c_str());
    }
    log("stopping on ", lab::stop_signal_name());
    return lab::kExitOk;
}

namespace {

// One client, until it leaves: its bytes come back, or for a descriptor, the file's content.
void serve_client(int conn, double idle_seconds, const lab::Log& log) {
    // 5. SO_PEERCRED: the client's pid, uid and gid, as the kernel recorded them at
    //    connect(). The client cannot forge them: access decisions may rest on them.
    ucred cred{};
    socklen_t size = sizeof cred;
    getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &size);
    const std::string who = "pid=" + std::to_string(cred.pid);
    log("client ", who, " connected: uid=", cred.uid, " gid=", cred.gid);
    set_idle_timeout(conn, idle_seconds);
    std::vector<char> buffer(kBufferSize);
    unsigned long long total = 0;
    for (bool answered = true; answered && !lab::stop_requested();) {
        // 6. recvmsg(), not recv(): with the bytes come control messages, here descriptors.
        const Received got = receive(conn, buffer);
        if (got.size == -1 && errno == EINTR) continue;  // the loop looks at the stop flag
        if (got.size == -1) break;
        if (got.size == 0) {
            log("client ", who, " left after ", total, " bytes");
            return;
        }
        const auto n = static_cast<std::size_t>(got.size);
        total += n;
        if (got.truncated) log("client ", who, ": too many descriptors; extras closed");
        // 7. write() the bytes back, or the content of the file a descriptor opens.
        if (got.fds.empty()) {
            log("from ", who, ": ", n, " bytes");
            answered = lab::write_all(conn, buffer.data(), n);
        } else {
            log("from ", who, ": ", n, " bytes and ", got.fds.size(), " descriptor(s)");
            answered = send_file(conn, got.fds[0].get(), who, log);
        }
    }
    if (lab::stop_requested()) return;  // else EAGAIN means set_idle_timeout()'s limit
    log("client ", who, " dropped: ",
        errno == EAGAIN ? "idle for " + lab::seconds_text(idle_seconds) : strerror(errno));
}

// recvmsg() into `buffer`, with room for kMaxFdsPerMessage descriptors beside it. Each one
// is open in our table already: into an Fd at once, so none leaks (nor, MSG_CMSG_CLOEXEC,
// goes to a child). MSG_CTRUNC in msg_flags: more came than there was room for.
Received receive(int conn, std::vector<char>& buffer) {
    // TASK 12.recvmsg
    // KIT: return lab::todo<Received>("12.recvmsg");
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    iovec data{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_iov = &data;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    Received got;
    got.size = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    if (got.size == -1) return got;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
            int fd = -1;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            got.fds.emplace_back(fd);
        }
    }
    got.truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    return got;
    // END TASK
}

// Sends at most kMaxFileBytes of a file the client opened and passed to us, with pread()
// at our own offsets (the client's is shared). pread() refuses what has no offsets (a pipe,
// a socket: ESPIPE), where read() could block for ever. False if the client is gone.
bool send_file(int conn, int file, const std::string& who, const lab::Log& log) {
    std::vector<char> buffer(kBufferSize);
    std::size_t sent = 0;
    while (sent < kMaxFileBytes) {  // a whole number of buffers
        const ssize_t n = pread(file, buffer.data(), buffer.size(), static_cast<off_t>(sent));
        if (n == -1) log("refused a descriptor from ", who, ": ", strerror(errno));
        if (n <= 0) break;
        if (!lab::write_all(conn, buffer.data(), static_cast<std::size_t>(n))) return false;
        sent += static_cast<std::size_t>(n);
    }
    log("sent ", sent, " bytes of the passed file to ", who);
    return true;
}

// 8. Datagrams: no listen(), no accept(). recvfrom() names each datagram's sender, and
//    sendto() answers that name, without waiting on a full queue (MSG_DONTWAIT).
void serve_datagrams(int sock, const lab::Log& log) {
    std::vector<char> buffer(kBufferSize);
    while (!lab::stop_requested()) {
        lab::Endpoint peer;
        // MSG_TRUNC: the datagram's real length, so one too big is noticed, not cut short.
        const ssize_t n =
            recvfrom(sock, buffer.data(), buffer.size(), MSG_TRUNC, peer.addr(), &peer.size);
        if (n == -1 && errno != EINTR) lab::warn("recvfrom");
        if (n == -1) continue;  // EINTR: a signal; the loop looks at the stop flag
        const auto size = static_cast<std::size_t>(n);
        const std::string from = lab::format_address(peer);  // a name the peer chose
        if (size > kBufferSize) {
            log("from ", from, ": ", size, " bytes, more than ", kBufferSize, "; dropped");
            continue;
        }
        log("from ", from, ": ", size, " bytes");
        if (peer.size <= sizeof(sa_family_t)) {
            log("cannot reply to ", from, ": the sender did not bind a name");
        } else if (sendto(sock, buffer.data(), size, MSG_DONTWAIT, peer.addr(), peer.size) == -1) {
            log("reply to ", from, " dropped: ", strerror(errno));
        }
    }
}

// Two servers started together on a stale path would both probe it, unlink it and bind:
// flock() on the directory lets one at a time through remove_stale(), bind(), listen().
lab::Fd lock_directory(const std::string& path) {
    const std::string dir = path.substr(0, path.rfind('/') + 1) + ".";  // "dir/." or "."
    lab::Fd lock(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!lock) lab::die("open", dir);
    if (flock(lock.get(), LOCK_EX) == -1) lab::die("flock", dir);  // until main() lets go
    return lock;
}

// A server that died left its socket file: remove it (true) if nobody answers on it; only
// ECONNREFUSED from a connect() that does not block proves that. Nothing there: false.
// Anything else (a file, a directory, a symlink, a live server) is left alone: exit 1.
bool remove_stale(const std::string& path, int type, const lab::Endpoint& address) {
    // TASK 12.stale
    struct stat st {};
    if (lstat(path.c_str(), &st) == -1) return false;
    if (!S_ISSOCK(st.st_mode)) {
        lab::fatal("bind " + path + ": Address already in use (not a socket; left alone)");
    }
    const lab::Fd probe(socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe) lab::die("socket");
    if (connect(probe.get(), address.addr(), address.size) == 0 || errno != ECONNREFUSED) {
        lab::die("bind", path, EADDRINUSE);
    }
    if (unlink(path.c_str()) == -1) lab::die("unlink", path);
    return true;
    // END TASK
}

// A client that sends nothing, or never reads its echo, would hold the one-at-a-time
// server for ever: after idle_seconds the blocked recvmsg() or write() fails with EAGAIN.
void set_idle_timeout(int conn, double idle_seconds) {
    const timeval idle = lab::to_timeval(idle_seconds);
    if (setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle) == -1 ||
        setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &idle, sizeof idle) == -1) {
        lab::warn("setsockopt SO_RCVTIMEO/SO_SNDTIMEO");
    }
}

}  // namespace
